"""The provider's side of publishing: seal a dataset, store it, list it on chain.

A dataset leaves the provider's machine only as ciphertext, and its key only
sealed (HPKE) to an attested enclave, bound to this chain, this Marketplace,
this ciphertext and this provider. The listing's `data_uri` points at a small public
manifest (schema, where the ciphertext is, the provider contract), which is
itself content-addressed; the ciphertext's sha256 is the listing's data hash
and keys its privacy budget.

Publishing is ordered so that nothing is half-published: every input is
validated first, then the blobs are stored (content-addressed, harmless if
orphaned), and only then one transaction creates the listing, or nothing does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eth_account.signers.local import LocalAccount
from eth_utils.address import is_address, to_checksum_address

from sterling.chain.marketplace import Marketplace
from sterling.chain.types import ZERO32, ZERO_ADDRESS, Enclave, Terms
from sterling.chain.units import to_delta, to_micro
from sterling.crypto import container, seal
from sterling.crypto.keys import DEFAULT_SCRYPT_N, load_secret, save_secret
from sterling.data.dataset import Dataset
from sterling.errors import UsageError
from sterling.files import atomic_write
from sterling.sdk.trust import choose_enclave as choose_enclave  # sealing only to a trusted enclave
from sterling.storage.blobs import BlobRef, BlobStore, cid_of
from sterling.storage.manifest import MANIFEST_FORMAT

MAX_CONTRACT_BYTES = 64 * 1024


@dataclass(frozen=True)
class ListingTerms:
    """A provider's public terms as a person writes them (ε as a number, prices in wei)."""

    price_per_job_wei: int
    price_per_epsilon_wei: int
    epsilon_budget: float
    max_epsilon_per_job: float
    delta: float
    policy: str | None = None
    pinned_measurement: str | None = None

    def to_chain(self) -> tuple[Terms, int, int]:
        """(Terms, budget in micro-ε, δ fixed point), after checking every term; all problems at once."""
        problems: list[str] = []

        def check(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        check(self.price_per_job_wei >= 0, f"price per job must be ≥ 0 wei, got {self.price_per_job_wei}")
        check(
            self.price_per_epsilon_wei >= 0, f"price per ε must be ≥ 0 wei, got {self.price_per_epsilon_wei}"
        )
        budget = cap = delta = 0
        try:
            budget = to_micro(self.epsilon_budget, "epsilon budget")
            check(budget > 0, "epsilon budget must be > 0")
        except UsageError as exc:
            problems.append(str(exc))
        try:
            cap = to_micro(self.max_epsilon_per_job, "max epsilon per job")
            check(cap > 0, "max epsilon per job must be > 0")
        except UsageError as exc:
            problems.append(str(exc))
        if budget and cap:
            check(
                cap <= budget,
                f"max epsilon per job ({self.max_epsilon_per_job}) exceeds the budget "
                f"({self.epsilon_budget})",
            )
        try:
            delta = to_delta(self.delta)
        except UsageError as exc:
            problems.append(str(exc))
        if self.policy is not None:
            check(is_address(self.policy), f"policy must be a contract address, got {self.policy!r}")
        pinned = ZERO32
        if self.pinned_measurement is not None:
            try:
                pinned = bytes.fromhex(self.pinned_measurement.removeprefix("0x"))
                check(len(pinned) == 32, "pinned measurement must be 32 bytes of hex")
            except ValueError:
                problems.append("pinned measurement must be 32 bytes of hex")
        if problems:
            raise UsageError("invalid terms: " + "; ".join(problems))
        terms = Terms(
            self.price_per_job_wei,
            self.price_per_epsilon_wei,
            cap,
            to_checksum_address(self.policy) if self.policy else ZERO_ADDRESS,
            pinned,
        )
        return terms, budget, delta


@dataclass(frozen=True)
class SealedDataset:
    """A dataset encrypted and stored; `data_key` never leaves this object unsealed."""

    ciphertext: BlobRef
    manifest: BlobRef
    contract: BlobRef | None
    schema: dict[str, Any]
    data_key: bytes = field(repr=False)


def read_contract(source: str | None) -> bytes | None:
    if source is None:
        return None
    raw = source.encode()
    if len(raw) > MAX_CONTRACT_BYTES:
        raise UsageError(f"provider contract is {len(raw)} bytes; the limit is {MAX_CONTRACT_BYTES}")
    try:
        compile(source, "<provider contract>", "exec")
    except SyntaxError as exc:
        raise UsageError(f"provider contract does not parse: line {exc.lineno}: {exc.msg}") from None
    return raw


def seal_dataset(
    dataset: Dataset,
    store: BlobStore,
    *,
    name: str = "",
    description: str = "",
    contract_source: str | None = None,
    allowed_families: tuple[str, ...] | None = None,
    appraisal_fee_wei: int = 0,
    preview_png: bytes | None = None,
    publish_class_counts: bool = False,
) -> SealedDataset:
    """Encrypt `dataset` under a fresh data key and store ciphertext, contract and manifest.

    `allowed_families` (public terms the verifier enforces) limits the model families jobs may
    train; `appraisal_fee_wei` is what the provider is paid when a consumer's contract drops its
    data after appraisal (at most the listing's price). `preview_png` (e.g. from
    `sterling.sdk.preview.render`) is published in the clear beside the manifest, as
    ``"preview": {uri, sha256}``, and `publish_class_counts` adds the rows per class to it: both
    reveal something of the data, so both are the provider's choice and off by default.
    """
    if appraisal_fee_wei < 0:
        raise UsageError(f"the appraisal fee must be ≥ 0 wei, got {appraisal_fee_wei}")
    if preview_png is not None and not preview_png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise UsageError("the preview must be a PNG image")
    from sterling.privacy.graph import FAMILIES

    unknown = sorted(set(allowed_families or ()) - set(FAMILIES))
    if unknown:
        raise UsageError(f"unknown model families {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    contract = read_contract(contract_source)
    key = AESGCM.generate_key(bit_length=256)
    ciphertext = store.put_bytes(
        container.encrypt_bytes(dataset.to_bytes(), key, chunk_size=container.ROW_CHUNK)
    )
    contract_ref = store.put_bytes(contract) if contract is not None else None
    schema = dataset.schema.to_json()
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "description": description,
        "schema": schema,
        "ciphertext": ciphertext.to_json(),
        "contract": contract_ref.to_json() if contract_ref else None,
        "terms": {
            "allowed_model_families": list(allowed_families) if allowed_families else None,
            "appraisal_fee_wei": appraisal_fee_wei,
        },
    }
    if preview_png is not None:
        preview_ref = store.put_bytes(preview_png)
        manifest["preview"] = {"uri": preview_ref.uri, "sha256": "0x" + preview_ref.hex}
    if publish_class_counts:
        manifest["class_counts"] = dataset.class_counts()
    manifest_ref = store.put_bytes(json.dumps(manifest, sort_keys=True, indent=1).encode())
    return SealedDataset(ciphertext, manifest_ref, contract_ref, schema, key)


@dataclass(frozen=True)
class Published:
    listing_id: int
    data_hash: bytes
    data_uri: str
    cid: str
    enclave: str
    contract_hash: bytes | None

    def to_json(self) -> dict[str, Any]:
        return {
            "listing_id": self.listing_id,
            "data_hash": "0x" + self.data_hash.hex(),
            "data_uri": self.data_uri,
            "cid": self.cid,
            "enclave": self.enclave,
            "contract_hash": "0x" + self.contract_hash.hex() if self.contract_hash else None,
        }


def publish(
    market: Marketplace,
    provider: LocalAccount,
    sealed: SealedDataset,
    terms: ListingTerms,
    *,
    enclave: Enclave,
) -> Published:
    """Seal the data key to `enclave` and publish the listing in one transaction."""
    chain_terms, budget, delta = terms.to_chain()
    binding = seal.data_key_binding(
        market.chain.chain_id, market.address, sealed.ciphertext.sha256, provider=provider.address
    )
    sealed_key = seal.seal(sealed.data_key, enclave.hpke_public_key, binding)
    contract_hash = sealed.contract.sha256 if sealed.contract else None
    listing_id = market.publish(
        provider,
        data_uri=sealed.manifest.uri,
        data_hash=sealed.ciphertext.sha256,
        sealed_key=sealed_key,
        terms=chain_terms,
        epsilon_budget=budget,
        delta=delta,
        contract_hash=contract_hash or ZERO32,
    )
    return Published(
        listing_id,
        sealed.ciphertext.sha256,
        sealed.manifest.uri,
        sealed.ciphertext.cid,
        enclave.address,
        contract_hash,
    )


@dataclass(frozen=True)
class LocalSealed:
    """The files `sterling data encrypt` writes: ciphertext, its key (passphrase-encrypted), manifest."""

    ciphertext: Path
    key_file: Path
    manifest: Path
    sha256: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "ciphertext": str(self.ciphertext),
            "key_file": str(self.key_file),
            "manifest": str(self.manifest),
            "sha256": "0x" + self.sha256.hex(),
            "cid": cid_of(self.sha256),
        }


def encrypt_to_dir(
    dataset: Dataset, out_dir: Path, *, name: str, passphrase: str, scrypt_n: int = DEFAULT_SCRYPT_N
) -> LocalSealed:
    """Encrypt a dataset into `out_dir` under a fresh key kept in a passphrase-protected keystore.

    Refuses to overwrite; on any failure nothing it started writing is left behind.
    """
    ciphertext = out_dir / f"{name}.sealed"
    key_file = out_dir / f"{name}.key.json"
    manifest = out_dir / f"{name}.manifest.json"
    existing = [p for p in (ciphertext, key_file, manifest) if p.exists()]
    if existing:
        raise UsageError(f"refusing to overwrite {', '.join(map(str, existing))}")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=256)
    try:
        save_secret(key_file, key, passphrase, kind="data-key", scrypt_n=scrypt_n)
        blob = container.encrypt_bytes(dataset.to_bytes(), key, chunk_size=container.ROW_CHUNK)
        digest = hashlib.sha256(blob).digest()
        atomic_write(ciphertext, blob)
        doc = {
            "format": MANIFEST_FORMAT,
            "name": name,
            "schema": dataset.schema.to_json(),
            "ciphertext": {"sha256": "0x" + digest.hex(), "cid": cid_of(digest), "size": len(blob)},
        }
        atomic_write(manifest, json.dumps(doc, indent=1, sort_keys=True).encode())
    except BaseException:
        for p in (ciphertext, key_file, manifest):
            p.unlink(missing_ok=True)
        raise
    return LocalSealed(ciphertext, key_file, manifest, digest)


def decrypt_to(ciphertext: Path, key_file: Path, out: Path, *, passphrase: str) -> Dataset:
    """Decrypt a provider's own ciphertext with its keystore; writes the canonical `.npz` to `out`.

    The dataset is verified and validated before anything appears at `out`.
    """
    key = load_secret(key_file, passphrase, kind="data-key")
    try:
        blob = ciphertext.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {ciphertext}: {exc.strerror}") from None
    plain = container.decrypt_bytes(blob, key)
    dataset = Dataset.from_bytes(plain)
    atomic_write(out, plain)
    return dataset
