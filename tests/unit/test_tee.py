"""The TEE interface: the simulation end to end (down to a real Marketplace), and the two
hardware backends against fake device folders with the kernel's and Gramine's layouts."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import sterling
from sterling.chain import digests, node
from sterling.chain.deploy import simulated_platform_key
from sterling.chain.marketplace import Marketplace
from sterling.chain.node import Chain
from sterling.enclave.tee import (
    SIMULATION_WARNING,
    SimulatedTee,
    TeeBackend,
    binding_report_data,
    code_measurement,
    detect,
    simulated_quote_digest,
)
from sterling.enclave.tee_hardware import NO_SEALING_KEY, ConfigfsTsmTee, GramineSgxTee
from sterling.errors import ConfigError, ContractRevert, EnclaveError

PACKAGE = Path(sterling.__file__).resolve().parent
HPKE_KEY = bytes.fromhex("22" * 32)
REPORT_DATA = bytes(range(64))
M1 = hashlib.sha256(b"measurement one").digest()
M2 = hashlib.sha256(b"measurement two").digest()


def _copy_package(dst: Path) -> Path:
    shutil.copytree(PACKAGE, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


# ------------------------------------------------------------ measurement


def test_code_measurement_is_32_bytes_and_cached() -> None:
    m = code_measurement()
    assert len(m) == 32
    assert code_measurement() is m


def test_code_measurement_ignores_where_the_checkout_lives(tmp_path: Path) -> None:
    a = _copy_package(tmp_path / "one" / "sterling")
    b = _copy_package(tmp_path / "elsewhere" / "deeper" / "sterling")
    assert code_measurement(a) == code_measurement(b)
    assert code_measurement(a) == code_measurement(a)


def test_code_measurement_changes_with_enclave_code_only(tmp_path: Path) -> None:
    root = _copy_package(tmp_path / "sterling")
    before = code_measurement(root)

    (root / "cli" / "app.py").write_text("# not enclave code\n")
    (root / "chain" / "artifacts" / "Marketplace.json").write_text("{}")
    assert code_measurement(root) == before

    (root / "enclave" / "tee.py").write_bytes((root / "enclave" / "tee.py").read_bytes() + b"\n# x\n")
    changed = code_measurement(root)
    assert changed != before

    (root / "chain" / "digests.py").write_text("")
    assert code_measurement(root) != changed

    (root / "enclave" / "new_module.py").write_text("")
    assert code_measurement(root) not in (before, changed)


def test_code_measurement_refuses_a_folder_that_is_not_the_package(tmp_path: Path) -> None:
    with pytest.raises(EnclaveError, match="no enclave/"):
        code_measurement(tmp_path)


# ------------------------------------------------------------- simulation


@pytest.fixture
def sim(tmp_path: Path) -> SimulatedTee:
    return SimulatedTee(tmp_path / "state", measurement=M1)


def test_simulation_defaults_to_the_code_measurement_and_says_so(tmp_path: Path) -> None:
    tee = SimulatedTee(tmp_path)
    assert tee.measurement() == code_measurement()
    assert tee.simulated
    assert tee.name == "simulation"
    assert SIMULATION_WARNING in tee.status()
    assert "SIMULATION" in repr(tee)


def test_simulation_uses_the_key_the_marketplace_is_deployed_to_trust(tmp_path: Path) -> None:
    tee = SimulatedTee(tmp_path, measurement=M1)
    assert tee.platform_key.address == simulated_platform_key(tmp_path).address
    secret = tmp_path / "simulated-platform.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_bytes()) == 32


def test_simulated_evidence_binds_the_report_data(sim: SimulatedTee) -> None:
    ev = sim.evidence(b"hello")
    assert ev.report_data == b"hello" + bytes(59)
    assert ev.measurement == ev.raw_measurement == M1
    assert ev.simulated
    assert ev.backend == "simulation"

    quote = json.loads(ev.quote)
    assert quote["warning"] == SIMULATION_WARNING
    assert quote["report_data"] == "0x" + ev.report_data.hex()
    signed = simulated_quote_digest(M1, ev.report_data)
    assert digests.recover_signer(signed, bytes.fromhex(quote["signature"][2:])) == sim.platform_key.address

    doc = ev.to_json()
    assert doc["simulated"] is True
    assert doc["warning"] == SIMULATION_WARNING
    assert doc["measurement"] == "0x" + M1.hex()


def test_report_data_longer_than_64_bytes_is_refused(sim: SimulatedTee) -> None:
    with pytest.raises(EnclaveError, match="65 bytes"):
        sim.evidence(bytes(65))


def test_a_measurement_must_be_32_bytes(tmp_path: Path) -> None:
    with pytest.raises(EnclaveError, match="32 bytes"):
        SimulatedTee(tmp_path, measurement=bytes(31))


def test_binding_report_data_ends_with_the_chain_binding() -> None:
    market = "0x" + "ab" * 20
    enclave = "0x" + "cd" * 20
    data = binding_report_data(chain_id=7, marketplace=market, enclave=enclave, hpke_public_key=HPKE_KEY)
    assert len(data) == 64
    assert data[32:] == digests.report_data(7, market)


# ------------------------------------------------- simulation on a real chain


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    c = node.embedded()
    yield c
    c.close()


def test_simulated_attestation_registers_on_a_real_marketplace(chain: Chain, tmp_path: Path) -> None:
    admin, enclave = chain.dev_accounts[0], chain.dev_accounts[1]
    tee = SimulatedTee(tmp_path, measurement=M1)
    m = Marketplace.deploy(chain, admin, attestation_signer=tee.platform_key.address, measurements=[M1])

    sig = tee.attest(
        chain_id=chain.chain_id, marketplace=m.address, enclave=enclave.address, hpke_public_key=HPKE_KEY
    )
    assert len(sig) == 65
    digest = digests.attestation_digest(
        chain_id=chain.chain_id,
        marketplace=m.address,
        measurement=M1,
        enclave=enclave.address,
        hpke_public_key=HPKE_KEY,
    )
    assert digests.recover_signer(digest, sig) == tee.platform_key.address

    m.register_enclave(enclave, measurement=M1, hpke_public_key=HPKE_KEY, attestation=sig)
    assert m.is_enclave(enclave.address)
    assert m.enclave(enclave.address).measurement == M1


def test_marketplace_refuses_an_attestation_of_other_code(chain: Chain, tmp_path: Path) -> None:
    admin, enclave = chain.dev_accounts[0], chain.dev_accounts[2]
    tee = SimulatedTee(tmp_path, measurement=M1)
    other = SimulatedTee(tmp_path, measurement=M2)  # same platform, other code
    m = Marketplace.deploy(chain, admin, attestation_signer=tee.platform_key.address, measurements=[M1])
    sig = other.attest(
        chain_id=chain.chain_id, marketplace=m.address, enclave=enclave.address, hpke_public_key=HPKE_KEY
    )

    with pytest.raises(ContractRevert, match="measurement not allowed"):
        m.register_enclave(enclave, measurement=M2, hpke_public_key=HPKE_KEY, attestation=sig)
    with pytest.raises(ContractRevert, match="not signed by the attestation signer"):
        m.register_enclave(enclave, measurement=M1, hpke_public_key=HPKE_KEY, attestation=sig)
    assert not m.is_enclave(enclave.address)


# ---------------------------------------------------------------- sealing


def test_seal_round_trip(sim: SimulatedTee) -> None:
    blob = sim.seal(b"the hpke private key", label="hpke")
    assert blob.startswith(b"STRLSEAL\x01")
    assert sim.unseal(blob, label="hpke") == b"the hpke private key"
    assert sim.seal(b"x", label="hpke") != sim.seal(b"x", label="hpke")  # random nonce


def test_sealed_state_survives_a_restart(tmp_path: Path) -> None:
    blob = SimulatedTee(tmp_path, measurement=M1).seal(b"state", label="hpke")
    assert SimulatedTee(tmp_path, measurement=M1).unseal(blob, label="hpke") == b"state"


@pytest.mark.parametrize("position", [0, 8, 9, 20, 21, -1])
def test_unseal_refuses_a_flipped_bit(sim: SimulatedTee, position: int) -> None:
    blob = bytearray(sim.seal(b"secret", label="hpke"))
    blob[position] ^= 0x01
    with pytest.raises(EnclaveError):
        sim.unseal(bytes(blob), label="hpke")


def test_unseal_refuses_truncation_and_garbage(sim: SimulatedTee) -> None:
    blob = sim.seal(b"secret", label="hpke")
    for bad in (b"", blob[:30], blob[:-1], b"NOTSEALD" + blob[8:]):
        with pytest.raises(EnclaveError):
            sim.unseal(bad, label="hpke")


def test_unseal_refuses_another_label(sim: SimulatedTee) -> None:
    blob = sim.seal(b"secret", label="hpke")
    with pytest.raises(EnclaveError, match="another label"):
        sim.unseal(blob, label="signing")
    with pytest.raises(EnclaveError, match="empty"):
        sim.seal(b"secret", label="")


def test_unseal_refuses_another_measurement(tmp_path: Path) -> None:
    blob = SimulatedTee(tmp_path, measurement=M1).seal(b"secret", label="hpke")
    with pytest.raises(EnclaveError, match="does not open here"):
        SimulatedTee(tmp_path, measurement=M2).unseal(blob, label="hpke")


def test_unseal_refuses_another_platform(tmp_path: Path) -> None:
    blob = SimulatedTee(tmp_path / "a", measurement=M1).seal(b"secret", label="hpke")
    with pytest.raises(EnclaveError, match="does not open here"):
        SimulatedTee(tmp_path / "b", measurement=M1).unseal(blob, label="hpke")


def test_save_and_load_sealed(sim: SimulatedTee, tmp_path: Path) -> None:
    path = tmp_path / "keys" / "hpke.sealed"
    sim.save_sealed(path, b"secret", label="hpke")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sim.load_sealed(path, label="hpke") == b"secret"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    with pytest.raises(EnclaveError, match=re.escape(str(path))):
        sim.load_sealed(path, label="other")
    with pytest.raises(EnclaveError, match="cannot read"):
        sim.load_sealed(tmp_path / "missing", label="hpke")


def test_a_corrupt_platform_secret_is_named(tmp_path: Path) -> None:
    (tmp_path / "simulated-platform.secret").write_bytes(b"short")
    with pytest.raises(EnclaveError, match=r"simulated-platform\.secret"):
        SimulatedTee(tmp_path, measurement=M1)


# ---------------------------------------------------------- Gramine (SGX)

MRENCLAVE = hashlib.sha256(b"mrenclave").digest()
MRSIGNER = hashlib.sha256(b"mrsigner").digest()


def sgx_report(mrenclave: bytes = MRENCLAVE) -> bytes:
    report = bytearray(432)
    report[64:96] = mrenclave
    report[128:160] = MRSIGNER
    return bytes(report)


def sgx_quote(report_data: bytes, *, version: int = 3, mrenclave: bytes = MRENCLAVE) -> bytes:
    quote = bytearray(48 + 384 + 100)  # header, report body, some signature data
    quote[0:2] = version.to_bytes(2, "little")
    quote[48 + 64 : 48 + 96] = mrenclave
    quote[48 + 320 : 48 + 384] = report_data
    return bytes(quote)


@pytest.fixture
def gramine(tmp_path: Path) -> Path:
    """A folder laid out like Gramine's /dev/attestation (files Gramine would synthesise are pre-written)."""
    root = tmp_path / "dev-attestation"
    (root / "keys").mkdir(parents=True)
    (root / "attestation_type").write_text("dcap\n")
    (root / "user_report_data").write_bytes(b"")
    (root / "my_target_info").write_bytes(bytes(512))
    (root / "report").write_bytes(sgx_report())
    (root / "quote").write_bytes(sgx_quote(REPORT_DATA))
    (root / "keys" / "_sgx_mrenclave").write_bytes(bytes(range(16)))
    (root / "keys" / "_sgx_mrsigner").write_bytes(bytes(range(16, 32)))
    return root


def test_gramine_measurement_is_mrenclave(gramine: Path) -> None:
    tee = GramineSgxTee(gramine)
    assert tee.measurement() == MRENCLAVE
    assert (gramine / "user_report_data").read_bytes() == bytes(64)
    assert not tee.simulated
    assert "SIMULATION" not in tee.status()


def test_gramine_evidence_writes_report_data_and_returns_the_quote(gramine: Path) -> None:
    ev = GramineSgxTee(gramine).evidence(REPORT_DATA)
    assert (gramine / "user_report_data").read_bytes() == REPORT_DATA
    assert ev.quote == (gramine / "quote").read_bytes()
    assert ev.measurement == ev.raw_measurement == MRENCLAVE
    assert ev.report_data == REPORT_DATA
    assert ev.backend == "sgx-gramine"
    assert not ev.simulated
    assert "warning" not in ev.to_json()


def test_gramine_refuses_a_quote_for_other_report_data(gramine: Path) -> None:
    with pytest.raises(EnclaveError, match="quote binds report data"):
        GramineSgxTee(gramine).evidence(b"other")


def test_gramine_refuses_a_quote_of_other_code(gramine: Path) -> None:
    (gramine / "quote").write_bytes(sgx_quote(REPORT_DATA, mrenclave=MRSIGNER))
    with pytest.raises(EnclaveError, match="MRENCLAVE differs"):
        GramineSgxTee(gramine).evidence(REPORT_DATA)


def test_gramine_without_remote_attestation_is_refused(gramine: Path) -> None:
    (gramine / "attestation_type").write_text("none\n")
    with pytest.raises(EnclaveError, match="'none'"):
        GramineSgxTee(gramine).evidence(REPORT_DATA)
    (gramine / "attestation_type").write_text("magic\n")
    with pytest.raises(EnclaveError, match="unknown attestation type"):
        GramineSgxTee(gramine).evidence(REPORT_DATA)


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("report", bytes(100), "SGX REPORT is 432 bytes"),
        ("quote", bytes(200), "too short for an SGX quote"),
        ("quote", sgx_quote(REPORT_DATA, version=9), "version 9"),
    ],
)
def test_gramine_malformed_files_are_named(gramine: Path, name: str, content: bytes, problem: str) -> None:
    (gramine / name).write_bytes(content)
    with pytest.raises(EnclaveError, match=problem) as info:
        GramineSgxTee(gramine).evidence(REPORT_DATA)
    assert str(gramine / name) in str(info.value)


def test_gramine_sealing_follows_the_mrenclave_key(gramine: Path) -> None:
    tee = GramineSgxTee(gramine)
    blob = tee.seal(b"secret", label="hpke")
    assert tee.unseal(blob, label="hpke") == b"secret"
    key = tee.sealing_key("hpke")
    assert len(key) == 32
    assert key != tee.sealing_key("other")

    (gramine / "keys" / "_sgx_mrenclave").write_bytes(bytes(range(1, 17)))  # another enclave or CPU
    assert tee.sealing_key("hpke") != key
    with pytest.raises(EnclaveError, match="does not open here"):
        tee.unseal(blob, label="hpke")

    (gramine / "keys" / "_sgx_mrenclave").write_bytes(bytes(8))
    with pytest.raises(EnclaveError, match="_sgx_mrenclave"):
        tee.sealing_key("hpke")


def test_gramine_missing_device_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not running inside Gramine-SGX"):
        GramineSgxTee(tmp_path / "nothing")


# --------------------------------------------------- configfs-tsm (TDX, SNP)

MRTD = hashlib.sha384(b"mrtd").digest()
SNP_MEASUREMENT = hashlib.sha384(b"snp launch digest").digest()


def tdx_quote(report_data: bytes, *, version: int = 4, tee_type: int = 0x81) -> bytes:
    quote = bytearray(48 + 584 + 4 + 64)  # header, TD report body, signature length and data
    quote[0:2] = version.to_bytes(2, "little")
    quote[4:8] = tee_type.to_bytes(4, "little")
    quote[184:232] = MRTD
    quote[48 + 520 : 48 + 584] = report_data
    return bytes(quote)


def snp_report(report_data: bytes, *, version: int = 3) -> bytes:
    report = bytearray(0x4A0)
    report[0:4] = version.to_bytes(4, "little")
    report[0x50:0x90] = report_data
    report[0x90:0xC0] = SNP_MEASUREMENT
    return bytes(report)


@dataclass
class FakeConfigfs:
    """Does what the kernel does on mkdir/rmdir in configfs-tsm: creates the entry's attribute
    files (here with a pre-built outblob) and removes them; remembers every inblob written."""

    provider: str
    outblob: bytes
    inblobs: list[bytes] = field(default_factory=list)

    def mkdir(self, entry: Path) -> None:
        entry.mkdir()
        (entry / "provider").write_text(self.provider + "\n")
        (entry / "generation").write_text("1\n")
        (entry / "inblob").write_bytes(b"")
        (entry / "outblob").write_bytes(self.outblob)

    def rmdir(self, entry: Path) -> None:
        self.inblobs.append((entry / "inblob").read_bytes())
        shutil.rmtree(entry)


@pytest.fixture
def tsm_root(tmp_path: Path) -> Path:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    return root


def test_tdx_measurement_and_evidence(tsm_root: Path) -> None:
    fake = FakeConfigfs("tdx_guest", tdx_quote(REPORT_DATA))
    tee = ConfigfsTsmTee(tsm_root, ops=fake)
    assert tee.name == "tdx"
    assert not tee.simulated
    assert tee.raw_measurement() == MRTD
    assert tee.measurement() == hashlib.sha256(MRTD).digest()

    ev = tee.evidence(REPORT_DATA)
    assert ev.backend == "tdx"
    assert ev.quote == fake.outblob
    assert ev.raw_measurement == MRTD
    assert ev.measurement == tee.measurement()
    assert ev.report_data == REPORT_DATA
    assert fake.inblobs[-1] == REPORT_DATA
    assert list(tsm_root.iterdir()) == []  # every entry removed


def test_sev_snp_measurement_and_evidence(tsm_root: Path) -> None:
    fake = FakeConfigfs("sev_guest", snp_report(REPORT_DATA))
    tee = ConfigfsTsmTee(tsm_root, ops=fake)
    assert tee.name == "sev-snp"
    assert tee.measurement() == hashlib.sha256(SNP_MEASUREMENT).digest()
    ev = tee.evidence(REPORT_DATA)
    assert ev.backend == "sev-snp"
    assert ev.raw_measurement == SNP_MEASUREMENT
    assert fake.inblobs[-1] == REPORT_DATA
    assert list(tsm_root.iterdir()) == []


def test_tsm_refuses_a_report_for_other_report_data(tsm_root: Path) -> None:
    tee = ConfigfsTsmTee(tsm_root, ops=FakeConfigfs("tdx_guest", tdx_quote(REPORT_DATA)))
    with pytest.raises(EnclaveError, match="outblob: the quote binds report data"):
        tee.evidence(b"other")
    assert list(tsm_root.iterdir()) == []


@pytest.mark.parametrize(
    ("provider", "outblob", "problem"),
    [
        ("tdx_guest", tdx_quote(REPORT_DATA)[:300], "too short for a TDX quote"),
        ("tdx_guest", tdx_quote(REPORT_DATA, version=5), "version 5 is not supported"),
        ("tdx_guest", tdx_quote(REPORT_DATA, tee_type=0), "is not TDX"),
        ("sev_guest", snp_report(REPORT_DATA)[:0x90], "too short for an SEV-SNP"),
        ("sev_guest", snp_report(REPORT_DATA, version=1), "version 1"),
    ],
)
def test_tsm_malformed_outblob_is_refused(
    tsm_root: Path, provider: str, outblob: bytes, problem: str
) -> None:
    tee = ConfigfsTsmTee(tsm_root, ops=FakeConfigfs(provider, outblob))
    with pytest.raises(EnclaveError, match=problem) as info:
        tee.evidence(REPORT_DATA)
    assert "outblob" in str(info.value)


def test_tsm_unknown_provider_is_refused(tsm_root: Path) -> None:
    with pytest.raises(EnclaveError, match="unknown provider 'arm_cca_guest'"):
        ConfigfsTsmTee(tsm_root, ops=FakeConfigfs("arm_cca_guest", b""))
    assert list(tsm_root.iterdir()) == []


def test_tsm_has_no_sealing_key(tsm_root: Path) -> None:
    tee = ConfigfsTsmTee(tsm_root, ops=FakeConfigfs("tdx_guest", tdx_quote(REPORT_DATA)))
    with pytest.raises(EnclaveError, match="no sealing key") as info:
        tee.sealing_key("hpke")
    assert str(info.value) == NO_SEALING_KEY
    with pytest.raises(EnclaveError, match="KBS"):
        tee.seal(b"secret", label="hpke")


def test_tsm_missing_interface_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a TDX or SEV-SNP guest"):
        ConfigfsTsmTee(tmp_path / "nothing")


# ----------------------------------------------------------------- detect


def _detect(state: Path, sgx: Path, tsm: Path, *, prefer: str | None = None) -> TeeBackend:
    fake = FakeConfigfs("tdx_guest", tdx_quote(REPORT_DATA))
    return detect(state, prefer=prefer, sgx_root=sgx, tsm_root=tsm, tsm_ops=fake)


def test_detect_picks_the_hardware_present(tmp_path: Path, gramine: Path, tsm_root: Path) -> None:
    missing = tmp_path / "missing"
    assert isinstance(_detect(tmp_path, gramine, tsm_root), GramineSgxTee)  # SGX first
    assert isinstance(_detect(tmp_path, missing, tsm_root), ConfigfsTsmTee)
    sim = _detect(tmp_path / "state", missing, missing)
    assert isinstance(sim, SimulatedTee)
    assert sim.simulated


def test_detect_honours_prefer(tmp_path: Path, gramine: Path, tsm_root: Path) -> None:
    missing = tmp_path / "missing"
    assert isinstance(_detect(tmp_path, gramine, tsm_root, prefer="simulation"), SimulatedTee)
    assert isinstance(_detect(tmp_path, gramine, tsm_root, prefer="tsm"), ConfigfsTsmTee)
    with pytest.raises(ConfigError, match="Gramine"):
        _detect(tmp_path, missing, tsm_root, prefer="sgx-gramine")
    with pytest.raises(ConfigError, match="configfs-tsm"):
        _detect(tmp_path, gramine, missing, prefer="tsm")
    with pytest.raises(ConfigError, match="unknown TEE backend"):
        _detect(tmp_path, gramine, tsm_root, prefer="sgx")


def test_detect_uses_the_default_device_paths(tmp_path: Path) -> None:
    if os.path.exists("/dev/attestation") or os.path.exists("/sys/kernel/config/tsm/report"):
        pytest.skip("this machine has a TEE interface")
    assert isinstance(detect(tmp_path), SimulatedTee)
