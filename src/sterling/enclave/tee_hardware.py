"""Hardware TEE backends: SGX through Gramine, TDX and SEV-SNP through Linux configfs-tsm.

Both only *produce* evidence. Whether a quote is genuine (its signature chain
up to Intel or AMD, TCB levels, revocation) is for an attestation service to
decide; nothing here verifies one. Every file is parsed defensively: a short
file, an unknown provider or a quote bound to other report data is an
`EnclaveError` naming the file and the problem.

Layouts (all integers little-endian):

- SGX REPORT (Gramine ``report``, 432 bytes): MRENCLAVE at 64, MRSIGNER at 128.
- SGX quote v2 (EPID) / v3 (DCAP): 48-byte header (version u16 at 0), then the
  384-byte report body: MRENCLAVE at 48+64, report data at 48+320.
- TDX quote v4: 48-byte header (version u16 at 0, TEE type u32 at 4 = 0x81),
  then the TD report body: MRTD at 48+136 = 184 (48 bytes), report data at 48+520.
- SEV-SNP attestation report (1184 bytes): version u32 at 0, report data at
  0x50 (64 bytes), MEASUREMENT at 0x90 (48 bytes).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from sterling.enclave.tee import Evidence, TeeBackend, derive_sealing_key, pad_report_data
from sterling.errors import ConfigError, EnclaveError

GRAMINE_ROOT = Path("/dev/attestation")
TSM_ROOT = Path("/sys/kernel/config/tsm/report")

SGX_REPORT_SIZE = 432
SGX_QUOTE_HEADER = 48
SGX_QUOTE_VERSIONS = (2, 3)  # EPID, DCAP
SGX_SEAL_KEY_SIZE = 16
GRAMINE_ATTESTATION_TYPES = ("none", "epid", "dcap")

TDX_QUOTE_VERSION = 4
TDX_TEE_TYPE = 0x81
TDX_MRTD = 184
TDX_REPORT_DATA = 48 + 520
SNP_REPORT_SIZE = 0x4A0
SNP_REPORT_DATA = 0x50
SNP_MEASUREMENT = 0x90
SNP_VERSIONS = (2, 3, 4, 5)
TSM_PROVIDERS = {"tdx_guest": "tdx", "sev_guest": "sev-snp"}

NO_SEALING_KEY = "TDX/SEV-SNP guests have no sealing key: configure a key-release service (KBS)"


# ------------------------------------------------------------------ files


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EnclaveError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_text(path: Path) -> str:
    try:
        return _read(path).decode("ascii").strip()
    except UnicodeDecodeError:
        raise EnclaveError(f"{path}: expected ASCII text") from None


def _write(path: Path, data: bytes) -> None:
    try:
        with path.open("wb") as fh:  # a pseudo-file: no temporary name and rename
            fh.write(data)
    except OSError as exc:
        raise EnclaveError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _need(blob: bytes, size: int, source: Path, what: str) -> None:
    if len(blob) < size:
        raise EnclaveError(f"{source}: {len(blob)} bytes is too short for {what} ({size} bytes needed)")


def _u16(blob: bytes, at: int) -> int:
    return int.from_bytes(blob[at : at + 2], "little")


def _u32(blob: bytes, at: int) -> int:
    return int.from_bytes(blob[at : at + 4], "little")


# ---------------------------------------------------------------- parsers


def parse_sgx_report(blob: bytes, source: Path) -> bytes:
    """MRENCLAVE from an SGX REPORT."""
    if len(blob) != SGX_REPORT_SIZE:
        raise EnclaveError(f"{source}: an SGX REPORT is {SGX_REPORT_SIZE} bytes, found {len(blob)}")
    return blob[64:96]


def parse_sgx_quote(blob: bytes, source: Path) -> tuple[bytes, bytes]:
    """(MRENCLAVE, report data) from an SGX quote v2 or v3."""
    _need(blob, SGX_QUOTE_HEADER + 384, source, "an SGX quote")
    if _u16(blob, 0) not in SGX_QUOTE_VERSIONS:
        raise EnclaveError(f"{source}: SGX quote version {_u16(blob, 0)} is not one of {SGX_QUOTE_VERSIONS}")
    body = SGX_QUOTE_HEADER
    return blob[body + 64 : body + 96], blob[body + 320 : body + 384]


def parse_tdx_quote(blob: bytes, source: Path) -> tuple[bytes, bytes]:
    """(MRTD, report data) from a TDX quote v4."""
    _need(blob, TDX_REPORT_DATA + 64, source, "a TDX quote v4")
    if _u16(blob, 0) != TDX_QUOTE_VERSION:
        raise EnclaveError(f"{source}: TDX quote version {_u16(blob, 0)} is not supported (only 4)")
    if _u32(blob, 4) != TDX_TEE_TYPE:
        raise EnclaveError(f"{source}: TEE type 0x{_u32(blob, 4):x} is not TDX (0x81)")
    return blob[TDX_MRTD : TDX_MRTD + 48], blob[TDX_REPORT_DATA : TDX_REPORT_DATA + 64]


def parse_snp_report(blob: bytes, source: Path) -> tuple[bytes, bytes]:
    """(MEASUREMENT, report data) from an SEV-SNP attestation report."""
    _need(blob, SNP_REPORT_SIZE, source, "an SEV-SNP attestation report")
    if _u32(blob, 0) not in SNP_VERSIONS:
        raise EnclaveError(f"{source}: SEV-SNP report version {_u32(blob, 0)} is not one of {SNP_VERSIONS}")
    return (
        blob[SNP_MEASUREMENT : SNP_MEASUREMENT + 48],
        blob[SNP_REPORT_DATA : SNP_REPORT_DATA + 64],
    )


def _check_binding(bound: bytes, wanted: bytes, source: Path) -> None:
    if bound != wanted:
        raise EnclaveError(
            f"{source}: the quote binds report data 0x{bound.hex()}, not the 0x{wanted.hex()} written"
        )


# ---------------------------------------------------------------- Gramine


class GramineSgxTee(TeeBackend):
    """SGX inside Gramine: reports, quotes and sealing keys from ``/dev/attestation``."""

    name = "sgx-gramine"
    simulated = False

    def __init__(self, root: Path = GRAMINE_ROOT) -> None:
        if not root.is_dir():
            raise ConfigError(f"no Gramine attestation device at {root}: not running inside Gramine-SGX")
        self.root = root
        self._measurement: bytes | None = None

    def attestation_type(self) -> str:
        """``none``, ``epid`` or ``dcap``, as the Gramine manifest configured remote attestation."""
        path = self.root / "attestation_type"
        kind = _read_text(path)
        if kind not in GRAMINE_ATTESTATION_TYPES:
            raise EnclaveError(f"{path}: unknown attestation type {kind!r}")
        return kind

    def measurement(self) -> bytes:
        """MRENCLAVE, from a local report over zero report data."""
        if self._measurement is None:
            _write(self.root / "user_report_data", bytes(64))
            self._measurement = parse_sgx_report(_read(self.root / "report"), self.root / "report")
        return self._measurement

    def evidence(self, report_data: bytes) -> Evidence:
        data = pad_report_data(report_data)
        if self.attestation_type() == "none":
            raise EnclaveError(
                f"{self.root / 'attestation_type'} is 'none': Gramine was started without remote "
                'attestation (set sgx.remote_attestation = "dcap" in the manifest)'
            )
        measurement = self.measurement()
        _write(self.root / "user_report_data", data)
        source = self.root / "quote"
        quote = _read(source)
        mrenclave, bound = parse_sgx_quote(quote, source)
        _check_binding(bound, data, source)
        if mrenclave != measurement:
            raise EnclaveError(f"{source}: quote MRENCLAVE differs from the one in {self.root / 'report'}")
        return Evidence(
            backend=self.name,
            simulated=False,
            measurement=measurement,
            report_data=data,
            quote=quote,
            raw_measurement=measurement,
        )

    def sealing_key(self, label: str) -> bytes:
        """HKDF over Gramine's MRENCLAVE sealing key: only this enclave on this CPU derives it."""
        path = self.root / "keys" / "_sgx_mrenclave"
        key = _read(path)
        if len(key) != SGX_SEAL_KEY_SIZE:
            raise EnclaveError(f"{path}: an SGX sealing key is {SGX_SEAL_KEY_SIZE} bytes, found {len(key)}")
        return derive_sealing_key(key, salt=None, label=label)


# ----------------------------------------------------------- configfs-tsm


class ConfigfsOps(Protocol):
    """What the kernel does when a configfs-tsm report entry is created or removed."""

    def mkdir(self, entry: Path) -> None: ...

    def rmdir(self, entry: Path) -> None: ...


class KernelConfigfs:
    """The real thing: configfs creates the entry's attribute files itself."""

    def mkdir(self, entry: Path) -> None:
        entry.mkdir()

    def rmdir(self, entry: Path) -> None:
        entry.rmdir()


class ConfigfsTsmTee(TeeBackend):
    """TDX or SEV-SNP guests through Linux configfs-tsm (``/sys/kernel/config/tsm/report``).

    Each request makes its own entry (``mkdir``), writes ``inblob``, reads
    ``provider``, ``generation`` and ``outblob``, and removes the entry. The
    provider (``tdx_guest`` or ``sev_guest``) is read once at construction and
    sets `name`. `ops` performs the mkdir/rmdir; tests pass a fake that, like
    the kernel, fills the new entry with attribute files.
    """

    simulated = False

    def __init__(self, root: Path = TSM_ROOT, *, ops: ConfigfsOps | None = None) -> None:
        if not root.is_dir():
            raise ConfigError(
                f"no configfs-tsm report interface at {root}: not a TDX or SEV-SNP guest "
                "(or configfs is not mounted)"
            )
        self.root = root
        self._ops: ConfigfsOps = ops or KernelConfigfs()
        with self._entry() as entry:
            self.provider = self._provider(entry)
        self.name = TSM_PROVIDERS[self.provider]
        self._raw_measurement: bytes | None = None

    @contextmanager
    def _entry(self) -> Iterator[Path]:
        entry = self.root / f"sterling-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            self._ops.mkdir(entry)
        except OSError as exc:
            raise EnclaveError(f"cannot create report entry {entry}: {exc.strerror or exc}") from exc
        ok = False
        try:
            yield entry
            ok = True
        finally:
            try:
                self._ops.rmdir(entry)
            except OSError as exc:
                if ok:  # otherwise the first error is the one to see
                    raise EnclaveError(f"cannot remove report entry {entry}: {exc.strerror or exc}") from exc

    def _provider(self, entry: Path) -> str:
        path = entry / "provider"
        provider = _read_text(path)
        if provider not in TSM_PROVIDERS:
            raise EnclaveError(f"{path}: unknown provider {provider!r}; expected tdx_guest or sev_guest")
        return provider

    def _generation(self, entry: Path) -> int:
        path = entry / "generation"
        text = _read_text(path)
        if not text.isdigit():
            raise EnclaveError(f"{path}: expected a number, found {text!r}")
        return int(text)

    def _report(self, data: bytes) -> tuple[bytes, bytes, bytes, Path]:
        """(outblob, raw measurement, report data it binds, outblob path) for 64 bytes of `data`."""
        with self._entry() as entry:
            provider = self._provider(entry)
            if provider != self.provider:
                raise EnclaveError(f"{entry / 'provider'}: was {self.provider}, now {provider}")
            _write(entry / "inblob", data)
            before = self._generation(entry)
            source = entry / "outblob"
            blob = _read(source)
            if self._generation(entry) != before:
                raise EnclaveError(f"{entry / 'generation'} changed while reading {source}: another writer?")
        parse = parse_tdx_quote if provider == "tdx_guest" else parse_snp_report
        raw, bound = parse(blob, source)
        return blob, raw, bound, source

    def raw_measurement(self) -> bytes:
        """MRTD (TDX) or MEASUREMENT (SEV-SNP), 48 bytes."""
        if self._raw_measurement is None:
            self._raw_measurement = self._report(bytes(64))[1]
        return self._raw_measurement

    def measurement(self) -> bytes:
        """sha256 of the 48-byte hardware measurement."""
        return hashlib.sha256(self.raw_measurement()).digest()

    def evidence(self, report_data: bytes) -> Evidence:
        data = pad_report_data(report_data)
        quote, raw, bound, source = self._report(data)
        _check_binding(bound, data, source)
        return Evidence(
            backend=self.name,
            simulated=False,
            measurement=hashlib.sha256(raw).digest(),
            report_data=data,
            quote=quote,
            raw_measurement=raw,
        )

    def sealing_key(self, label: str) -> bytes:
        raise EnclaveError(NO_SEALING_KEY)
