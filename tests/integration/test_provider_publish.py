"""Publishing as a provider runs it: `sterling provider publish` against anvil, then reading it back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sterling.chain import digests, node
from sterling.chain.deploy import ensure_deployment, simulated_platform_key
from sterling.chain.marketplace import Marketplace
from sterling.crypto import container, seal
from sterling.data.dataset import Dataset
from sterling.data.loaders import load_dataset
from sterling.errors import IntegrityError
from sterling.sdk.trust import TrustedEnclave, TrustFile
from sterling.storage.blobs import BlobStore
from sterling.storage.manifest import read_manifest

pytestmark = pytest.mark.anvil
STERLING = [sys.executable, "-m", "sterling.cli"]
MEASUREMENT = bytes.fromhex("5a" * 32)


@pytest.fixture
def market(tmp_path, anvil_binary, monkeypatch):
    chain = node.start_anvil(anvil_binary)
    state = tmp_path / "chain"
    admin = chain.dev_accounts[0]
    deployment, _ = ensure_deployment(chain, state, deployer=admin)
    m = Marketplace.at(chain, deployment.marketplace)
    signer = simulated_platform_key(state)
    enclave = chain.dev_accounts[1]
    hpke = X25519PrivateKey.generate()
    m.allow_measurement_now(admin, MEASUREMENT)
    att = digests.sign_digest(
        signer,
        m.attestation_digest(
            measurement=MEASUREMENT, enclave=enclave.address, hpke_public_key=seal.public_bytes(hpke)
        ),
    )
    m.register_enclave(
        enclave, measurement=MEASUREMENT, hpke_public_key=seal.public_bytes(hpke), attestation=att
    )
    # The provider has confirmed this enclave: its measurement, attested by the (simulated) platform.
    monkeypatch.setenv("STERLING_HOME", str(tmp_path / "home"))
    TrustFile.in_home(tmp_path / "home").add(TrustedEnclave(MEASUREMENT, signer.address, simulated=True))
    yield m, state, hpke
    chain.close()


def write_csv(path: Path, rows: int = 40) -> Path:
    rng = np.random.default_rng(3)
    lines = ["a,b,c,label"]
    for i in range(rows):
        a, b, c = rng.normal(size=3)
        lines.append(f"{a:.4f},{b:.4f},{c:.4f},{'sick' if i % 3 == 0 else 'well'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def publish_cmd(path: Path, state: Path, store: Path, url: str, **overrides: str) -> list[str]:
    terms = {
        "--price-per-job": "1000",
        "--price-per-epsilon": "2000",
        "--epsilon-budget": "4",
        "--max-epsilon-per-job": "2",
        "--delta": "1e-5",
    }
    terms.update(overrides)
    args = [*STERLING, "provider", "publish", str(path), "--rpc-url", url, "--state", str(state)]
    args += ["--store", str(store), "--dev-account", "5", "--format", "json", "--name", "clinic-a"]
    for k, v in terms.items():
        args += [k, v]
    return args


def test_publish_stores_ciphertext_and_seals_the_key_to_the_enclave(market, tmp_path):
    m, state, hpke = market
    data = write_csv(tmp_path / "clinic.csv")
    store = tmp_path / "blobs"
    out = subprocess.run(publish_cmd(data, state, store, m.chain.rpc_url), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    listing = m.listing(result["listing_id"])
    assert listing.provider == m.chain.dev_accounts[5].address
    assert "0x" + listing.data_hash.hex() == result["data_hash"]
    assert listing.budget.total == 4_000_000
    assert listing.terms.max_epsilon_per_job == 2_000_000
    manifest = read_manifest(listing.data_uri)
    assert manifest["name"] == "clinic-a"
    assert manifest["schema"]["rows"] == 40
    assert manifest["schema"]["classes"] == ["sick", "well"]
    # Only the enclave's key opens the data key, bound to this chain, contract, ciphertext and provider.
    binding = seal.data_key_binding(m.chain.chain_id, m.address, listing.data_hash, provider=listing.provider)
    key = seal.unseal(listing.sealed_key, hpke, binding)
    with pytest.raises(IntegrityError):
        seal.unseal(listing.sealed_key, X25519PrivateKey.generate(), binding)
    with pytest.raises(IntegrityError):
        seal.unseal(
            listing.sealed_key,
            hpke,
            seal.data_key_binding(1, m.address, listing.data_hash, provider=listing.provider),
        )
    ciphertext = BlobStore(store).get_bytes(listing.data_hash)
    dataset = Dataset.from_bytes(container.decrypt_bytes(ciphertext, key))
    original = load_dataset(data)
    assert np.array_equal(dataset.features, original.features)
    assert np.array_equal(dataset.labels, original.labels)
    # The plaintext never reached storage.
    raw = data.read_bytes()
    for blob in store.rglob("*"):
        if blob.is_file():
            assert raw[:40] not in blob.read_bytes()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"--max-epsilon-per-job": "5"}, "exceeds the budget"),
        ({"--delta": "2"}, "delta must be in (0, 1)"),
        ({"--epsilon-budget": "0.0000001"}, "more precision"),
        ({"--price-per-job": "-1"}, "price per job must be"),
    ],
)
def test_bad_terms_are_refused_and_nothing_is_published(market, tmp_path, override, message):
    m, state, _ = market
    data = write_csv(tmp_path / "clinic.csv")
    store = tmp_path / "blobs"
    out = subprocess.run(
        publish_cmd(data, state, store, m.chain.rpc_url, **override), capture_output=True, text=True
    )
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert m.listing_count() == 0
    assert not store.exists() or not any(p.is_file() for p in store.rglob("*"))


def test_a_bad_dataset_is_refused_before_anything_is_stored(market, tmp_path):
    m, state, _ = market
    bad = tmp_path / "ragged.csv"
    bad.write_text("a,b,label\n1,2,x\n3,y\n")
    store = tmp_path / "blobs"
    out = subprocess.run(publish_cmd(bad, state, store, m.chain.rpc_url), capture_output=True, text=True)
    assert out.returncode == 2
    assert "ragged.csv" in out.stderr
    assert m.listing_count() == 0
    assert not store.exists() or not any(p.is_file() for p in store.rglob("*"))


def test_listings_shows_schema_and_terms(market, tmp_path):
    m, state, _ = market
    data = write_csv(tmp_path / "clinic.csv")
    subprocess.run(
        publish_cmd(data, state, tmp_path / "blobs", m.chain.rpc_url), check=True, capture_output=True
    )
    out = subprocess.run(
        [*STERLING, "listings", "--rpc-url", m.chain.rpc_url, "--state", str(state), "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    page = json.loads(out.stdout)
    assert (page["total"], page["page"], page["pages"]) == (1, 1, 1)
    (item,) = page["items"]
    assert item["name"] == "clinic-a"
    assert item["schema"]["modality"] == "tabular"
    assert item["budget"]["epsilon_left"] == 4.0
    assert item["terms"]["price_per_epsilon_wei"] == 2000


def test_job_verify_reads_terms_from_the_chain_and_the_manifest(market, tmp_path):
    m, state, _ = market
    data = write_csv(tmp_path / "clinic.csv", rows=200)
    cmd = [
        *publish_cmd(data, state, tmp_path / "blobs", m.chain.rpc_url),
        "--allow-family",
        "logistic_regression",
    ]
    listing_id = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)[
        "listing_id"
    ]

    def verify(family: str, epsilon: float) -> tuple[int, dict]:
        job = subprocess.run(
            [*STERLING, "job", "template", family, "--listing", str(listing_id), "--epsilon", str(epsilon)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        (tmp_path / "job.json").write_text(job)
        out = subprocess.run(
            [*STERLING, "job", "verify", str(tmp_path / "job.json"), "--rpc-url", m.chain.rpc_url,
             "--state", str(state), "--format", "json"],
            capture_output=True, text=True,
        )  # fmt: skip
        return out.returncode, json.loads(out.stdout)

    code, report = verify("logistic_regression", 2.0)
    assert code == 0, report
    assert report["summary"]["train_rows"] == 160
    assert report["summary"]["price_total_wei"] == 1000 + 2000 * 2
    code, report = verify("mlp", 3.0)
    assert code == 1
    terms = {v["term"] for v in report["violations"]}
    assert terms == {"model_family", "max_epsilon_per_job"}
    family = next(v for v in report["violations"] if v["term"] == "model_family")
    assert family["allowed"] == ["logistic_regression"]
    assert family["listing_id"] == listing_id
