"""One interface for attestation and sealing, whatever runs the enclave.

`TeeBackend` is what the enclave worker talks to: a 32-byte measurement of
the code it runs, evidence (a quote) binding 64 bytes of report data, and a
sealing key bound to the platform and the measurement. Three kinds exist:

- `SimulatedTee` (this module): no hardware. The measurement is the hash of
  Sterling's own enclave code; a local "platform" key signs attestations.
  It protects nothing, and says so (`SIMULATION_WARNING`) wherever it shows.
- `GramineSgxTee` and `ConfigfsTsmTee` (`sterling.enclave.tee_hardware`):
  SGX through Gramine's ``/dev/attestation``, TDX and SEV-SNP through Linux
  configfs-tsm. They produce real quotes; verifying one is an attestation
  service's job and out of scope here (see docs/tee.md).

`detect` picks one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eth_abi.abi import encode
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from sterling.chain import digests
from sterling.chain.deploy import simulated_platform_key
from sterling.errors import ConfigError, EnclaveError
from sterling.files import atomic_write, temp_name

if TYPE_CHECKING:
    from sterling.enclave.tee_hardware import ConfigfsOps

log = logging.getLogger(__name__)

SIMULATION_WARNING = "SIMULATION: no TEE hardware; this attests nothing"
REPORT_DATA_SIZE = 64
PLATFORM_SECRET_FILE = "simulated-platform.secret"
SIM_QUOTE_FORMAT = "sterling-simulated-quote/1"

SEAL_MAGIC = b"STRLSEAL"
SEAL_VERSION = 1
_SEAL_HEADER = SEAL_MAGIC + bytes([SEAL_VERSION])
_NONCE = 12
_TAG = 16

# What the enclave runs, relative to the sterling package: these subpackages whole...
ENCLAVE_SUBPACKAGES = ("enclave", "privacy", "crypto", "data", "storage")
OPTIONAL_SUBPACKAGES = ("appraisal",)
# ...the chain client's own modules (not its artefacts or Vyper sources), and these files.
ENCLAVE_MODULES = ("errors.py", "files.py")

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _measured_files(root: Path) -> list[tuple[str, Path]]:
    files: list[Path] = []
    for sub in ENCLAVE_SUBPACKAGES + OPTIONAL_SUBPACKAGES:
        folder = root / sub
        if not folder.is_dir():
            if sub in OPTIONAL_SUBPACKAGES:
                continue
            raise EnclaveError(f"cannot measure {root}: it has no {sub}/ (is it the sterling package?)")
        files.extend(folder.rglob("*.py"))
    files.extend((root / "chain").glob("*.py"))
    files.extend(root / name for name in ENCLAVE_MODULES)
    return sorted((p.relative_to(root).as_posix(), p) for p in files)


def _measure(root: Path) -> bytes:
    h = hashlib.sha256()
    for rel, path in _measured_files(root):
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise EnclaveError(f"cannot measure {path}: {exc.strerror or exc}") from exc
        h.update(rel.encode() + b"\0" + hashlib.sha256(content).digest())
    return h.digest()


@functools.cache
def _own_measurement() -> bytes:
    return _measure(_PACKAGE_ROOT)


def code_measurement(root: Path | None = None) -> bytes:
    """sha256 over the enclave's own code, independent of where the checkout lives.

    Each measured file (see `ENCLAVE_SUBPACKAGES`, `ENCLAVE_MODULES` and the
    chain client's ``*.py``) contributes (relative path, NUL, sha256(content)),
    in sorted path order. Without `root` this is the installed sterling package,
    computed once per process; an explicit `root` (a copy of the package) is
    measured afresh on every call.
    """
    return _own_measurement() if root is None else _measure(root)


def pad_report_data(report_data: bytes) -> bytes:
    """`report_data` zero-padded to the 64 bytes a quote binds; longer is refused."""
    if len(report_data) > REPORT_DATA_SIZE:
        raise EnclaveError(f"report data is {len(report_data)} bytes; a quote binds at most 64")
    return bytes(report_data).ljust(REPORT_DATA_SIZE, b"\0")


def binding_report_data(*, chain_id: int, marketplace: str, enclave: str, hpke_public_key: bytes) -> bytes:
    """The 64 bytes a hardware quote should bind for registration on a Marketplace.

    keccak(enclave address, HPKE key) ‖ `digests.report_data(chain_id, marketplace)`:
    an attestation service that checked the quote can then sign the attestation
    digest for exactly these keys on exactly this chain and Marketplace.
    """
    keys = keccak(encode(["address", "bytes32"], [to_checksum_address(enclave), hpke_public_key]))
    return keys + digests.report_data(chain_id, marketplace)


def simulated_quote_digest(measurement: bytes, report_data: bytes) -> bytes:
    """What the simulated platform key signs in a simulated quote (EIP-191, like attestations)."""
    return hashlib.sha256(b"sterling.simulated-quote.v1" + measurement + report_data).digest()


@dataclass(frozen=True)
class Evidence:
    """What a backend produces for one attestation request."""

    backend: str  # "simulation", "sgx-gramine", "tdx", "sev-snp"
    simulated: bool
    measurement: bytes  # 32 bytes; longer hardware measurements are reduced with sha256
    report_data: bytes  # the 64 bytes the quote binds
    quote: bytes  # the raw quote or report; for the simulation a small signed JSON blob
    raw_measurement: bytes  # as the hardware reports it (48 bytes for TDX and SEV-SNP)

    def __post_init__(self) -> None:
        where = f"{self.backend} evidence"
        if len(self.measurement) != 32:
            raise EnclaveError(f"{where}: measurement is {len(self.measurement)} bytes, not 32")
        if len(self.report_data) != REPORT_DATA_SIZE:
            raise EnclaveError(f"{where}: report data is {len(self.report_data)} bytes, not 64")

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "backend": self.backend,
            "simulated": self.simulated,
            "measurement": "0x" + self.measurement.hex(),
            "raw_measurement": "0x" + self.raw_measurement.hex(),
            "report_data": "0x" + self.report_data.hex(),
            "quote": "0x" + self.quote.hex(),
        }
        if self.simulated:
            doc["warning"] = SIMULATION_WARNING
        return doc


class TeeBackend(ABC):
    """Attestation and sealing for the enclave; `simulated` says whether any hardware stands behind it."""

    name: str
    simulated: bool

    @abstractmethod
    def measurement(self) -> bytes:
        """The 32-byte measurement the Marketplace allow-lists."""

    @abstractmethod
    def evidence(self, report_data: bytes) -> Evidence:
        """A quote binding `report_data` (at most 64 bytes, zero-padded to 64)."""

    @abstractmethod
    def sealing_key(self, label: str) -> bytes:
        """32 bytes bound to the platform secret, the measurement and `label`."""

    def status(self) -> str:
        """One line for the CLI, logs and web pages; a simulation says so plainly."""
        if self.simulated:
            return f"{self.name} ({SIMULATION_WARNING})"
        return f"{self.name} (hardware TEE, measurement 0x{self.measurement().hex()})"

    def seal(self, plaintext: bytes, *, label: str) -> bytes:
        """AES-256-GCM under `sealing_key(label)`: header ‖ nonce ‖ ciphertext, label as AAD."""
        nonce = os.urandom(_NONCE)
        ct = AESGCM(self.sealing_key(label)).encrypt(nonce, plaintext, _aad(label))
        return _SEAL_HEADER + nonce + ct

    def unseal(self, blob: bytes, *, label: str) -> bytes:
        """Open a sealed blob; `EnclaveError` if tampered or sealed elsewhere, by other code or label."""
        if len(blob) < len(_SEAL_HEADER) + _NONCE + _TAG:
            raise EnclaveError(f"sealed blob is {len(blob)} bytes: too short to be one")
        if blob[: len(SEAL_MAGIC)] != SEAL_MAGIC:
            raise EnclaveError("not a sealed blob: it does not start with STRLSEAL")
        if blob[len(SEAL_MAGIC)] != SEAL_VERSION:
            raise EnclaveError(f"sealed blob version {blob[len(SEAL_MAGIC)]} is not supported")
        key = self.sealing_key(label)
        nonce = blob[len(_SEAL_HEADER) : len(_SEAL_HEADER) + _NONCE]
        try:
            return AESGCM(key).decrypt(nonce, blob[len(_SEAL_HEADER) + _NONCE :], _aad(label))
        except InvalidTag:
            raise EnclaveError(
                f"sealed blob does not open here ({self.name}, label {label!r}): tampered, or sealed "
                "on another platform, by other enclave code, or under another label"
            ) from None

    def save_sealed(self, path: Path, plaintext: bytes, *, label: str) -> None:
        """Seal and write atomically, readable by the owner only."""
        atomic_write(path, self.seal(plaintext, label=label), mode=0o600)

    def load_sealed(self, path: Path, *, label: str) -> bytes:
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise EnclaveError(f"cannot read sealed file {path}: {exc.strerror or exc}") from exc
        try:
            return self.unseal(blob, label=label)
        except EnclaveError as exc:
            raise EnclaveError(f"{path}: {exc}") from None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}{' SIMULATION' if self.simulated else ''}>"


def _aad(label: str) -> bytes:
    if not label:
        raise EnclaveError("a sealing label must not be empty")
    return _SEAL_HEADER + b"|" + label.encode()


def derive_sealing_key(secret: bytes, *, salt: bytes | None, label: str) -> bytes:
    if not label:
        raise EnclaveError("a sealing label must not be empty")
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"sterling.seal|" + label.encode())
    return kdf.derive(secret)


def _platform_secret(path: Path) -> bytes:
    """32 random bytes, created once: a concurrent creator never replaces an existing secret."""
    if not path.exists():
        tmp = temp_name(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(32))
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # unlike rename, fails if another process got there first
        finally:
            tmp.unlink(missing_ok=True)
    try:
        secret = path.read_bytes()
    except OSError as exc:
        raise EnclaveError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(secret) != 32:
        raise EnclaveError(f"{path}: a simulated platform secret is 32 bytes, found {len(secret)}")
    return secret


class SimulatedTee(TeeBackend):
    """SIMULATION. A local 'platform' whose secret and attestation key live in a state folder.

    Anyone who can read the folder can forge attestations and open sealed
    state: this exists so the whole flow runs without TEE hardware, not to
    protect anything.
    """

    name = "simulation"
    simulated = True

    def __init__(self, state_dir: Path, *, measurement: bytes | None = None) -> None:
        if measurement is not None and len(measurement) != 32:
            raise EnclaveError(f"a measurement is 32 bytes, got {len(measurement)}")
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir
        self._measurement = code_measurement() if measurement is None else bytes(measurement)
        self._secret = _platform_secret(state_dir / PLATFORM_SECRET_FILE)
        self._platform_key = simulated_platform_key(state_dir)
        log.warning("%s (enclave state in %s)", SIMULATION_WARNING, state_dir)

    @property
    def platform_key(self) -> LocalAccount:
        """The simulated attestation key: the one `sterling chain deploy` makes the Marketplace trust."""
        return self._platform_key

    def measurement(self) -> bytes:
        return self._measurement

    def evidence(self, report_data: bytes) -> Evidence:
        data = pad_report_data(report_data)
        signed = simulated_quote_digest(self._measurement, data)
        quote = {
            "format": SIM_QUOTE_FORMAT,
            "warning": SIMULATION_WARNING,
            "measurement": "0x" + self._measurement.hex(),
            "report_data": "0x" + data.hex(),
            "platform": self._platform_key.address,
            "signature": "0x" + digests.sign_digest(self._platform_key, signed).hex(),
        }
        return Evidence(
            backend=self.name,
            simulated=True,
            measurement=self._measurement,
            report_data=data,
            quote=json.dumps(quote, sort_keys=True).encode(),
            raw_measurement=self._measurement,
        )

    def sealing_key(self, label: str) -> bytes:
        return derive_sealing_key(self._secret, salt=self._measurement, label=label)

    def attest(self, *, chain_id: int, marketplace: str, enclave: str, hpke_public_key: bytes) -> bytes:
        """The 65-byte signature `Marketplace.register_enclave` checks.

        Only the simulation can sign for itself; hardware evidence goes to an
        attestation service that verifies the quote and signs this same digest
        (out of scope here).
        """
        if len(hpke_public_key) != 32:
            raise EnclaveError(f"an HPKE public key is 32 bytes, got {len(hpke_public_key)}")
        digest = digests.attestation_digest(
            chain_id=chain_id,
            marketplace=marketplace,
            measurement=self._measurement,
            enclave=enclave,
            hpke_public_key=hpke_public_key,
        )
        return digests.sign_digest(self._platform_key, digest)


BACKEND_CHOICES = ("simulation", "sgx-gramine", "tsm")


def detect(
    state_dir: Path,
    *,
    prefer: str | None = None,
    sgx_root: Path | None = None,
    tsm_root: Path | None = None,
    tsm_ops: ConfigfsOps | None = None,
) -> TeeBackend:
    """The backend this process can use: Gramine-SGX, else configfs-tsm, else the simulation.

    `prefer` forces one of `BACKEND_CHOICES` and fails (`ConfigError`) if it is
    unavailable. When hardware interfaces are present but broken, the error is
    raised rather than silently falling back to a simulation. The roots and
    `tsm_ops` (a `ConfigfsOps`) exist for tests with fake device folders.
    """
    from sterling.enclave import tee_hardware as hw  # imports this module: import it lazily

    sgx = sgx_root or hw.GRAMINE_ROOT
    tsm = tsm_root or hw.TSM_ROOT
    if prefer is not None and prefer not in BACKEND_CHOICES:
        raise ConfigError(f"unknown TEE backend {prefer!r}; one of {', '.join(BACKEND_CHOICES)}")
    if prefer == "sgx-gramine" or (prefer is None and sgx.exists()):
        return hw.GramineSgxTee(sgx)
    if prefer == "tsm" or (prefer is None and tsm.exists()):
        return hw.ConfigfsTsmTee(tsm, ops=tsm_ops)
    return SimulatedTee(state_dir)
