"""Which enclaves a client seals to: a measurement and an attestation signer it has confirmed itself.

"Registered on the Marketplace" only means that the attestation signer in force at the time
signed for the enclave, and the Marketplace's admin chooses that signer and the measurement
allow-list. An admin who points the signer at its own key can register an ordinary account as an
"enclave" and read every data key sealed to it. So a provider's data key, and a consumer's job
body, are sealed only to an enclave whose code measurement *and* attesting signer the client
trusts: a `Trust` the caller passes in (the CLI reads it from `$STERLING_HOME/trust.json`, kept by
`sterling enclave trust`), narrowed further by any measurement a listing pins.

Which signer attested an enclave is read from the EnclaveRegistry's own events: the enclave's
newest `EnclaveRegistered` event names it (``signer``) when the contract records it; otherwise it
is the signer in force at that event's block time, replayed from the `AttestationSignerAnnounced`
events (each takes effect at its ``effective_at``, CHANGE_DELAY after it was announced), since the
contract checked the attestation against exactly that key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_utils.address import is_address, to_checksum_address

from sterling.chain.marketplace import Marketplace
from sterling.chain.types import ZERO32, Enclave
from sterling.errors import EnclaveError, NotFound, UsageError
from sterling.files import atomic_write

if TYPE_CHECKING:
    from sterling.index import MarketIndex

TRUST_FORMAT = "sterling.trust/1"
#: The trust settings' file name in Sterling's home folder.
TRUST_FILE = "trust.json"


class UntrustedEnclave(EnclaveError):
    """The client refused to seal to an enclave whose measurement or attestation signer it does not trust."""


def parse_measurement(text: str) -> bytes:
    """32 bytes from hex (with or without 0x); UsageError otherwise."""
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise UsageError(f"a measurement is 32 bytes of hex, got {text!r}")
    return raw


def parse_signer(text: str) -> str:
    if not is_address(text):
        raise UsageError(f"an attestation signer is an address, got {text!r}")
    return to_checksum_address(text)


@dataclass(frozen=True)
class TrustedEnclave:
    """One measurement the client trusts when attested by one signer."""

    measurement: bytes
    signer: str
    simulated: bool = False
    note: str = ""
    added: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "measurement": "0x" + self.measurement.hex(),
            "signer": self.signer,
            "simulated": self.simulated,
            "note": self.note,
            "added": self.added,
        }

    @classmethod
    def from_json(cls, doc: Any) -> TrustedEnclave:
        if not isinstance(doc, dict):
            raise UsageError(f"a trusted enclave is an object, got {doc!r}")
        return cls(
            parse_measurement(str(doc.get("measurement", ""))),
            parse_signer(str(doc.get("signer", ""))),
            simulated=bool(doc.get("simulated", False)),
            note=str(doc.get("note", "")),
            added=str(doc.get("added", "")),
        )


@dataclass(frozen=True)
class Trust:
    """The (measurement, attestation signer) pairs a client seals to; empty trusts nothing."""

    entries: tuple[TrustedEnclave, ...] = ()

    @classmethod
    def of(cls, measurement: bytes, signer: str, *, simulated: bool = False, note: str = "") -> Trust:
        """Trust one measurement attested by one signer (e.g. a test world's own simulated enclave)."""
        return cls((TrustedEnclave(bytes(measurement), parse_signer(signer), simulated, note),))

    def entry(self, measurement: bytes, signer: str) -> TrustedEnclave | None:
        """The entry that trusts `measurement` attested by `signer`, if any."""
        wanted = to_checksum_address(signer) if is_address(signer) else ""
        return next((e for e in self.entries if e.measurement == measurement and e.signer == wanted), None)

    def with_entry(self, new: TrustedEnclave) -> Trust:
        kept = [e for e in self.entries if (e.measurement, e.signer) != (new.measurement, new.signer)]
        return Trust((*kept, new))

    def without(self, measurement: bytes, signer: str | None = None) -> Trust:
        """Forget `measurement` (only its pairing with `signer`, if given)."""
        return Trust(
            tuple(
                e
                for e in self.entries
                if not (e.measurement == measurement and (signer is None or e.signer == signer))
            )
        )


@dataclass(frozen=True)
class TrustFile:
    """Local trust settings kept as JSON (`$STERLING_HOME/trust.json`); a missing file trusts nothing."""

    path: Path

    @classmethod
    def in_home(cls, home: Path) -> TrustFile:
        return cls(home / TRUST_FILE)

    def load(self) -> Trust:
        if not self.path.exists():
            return Trust()
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read trust settings {self.path}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != TRUST_FORMAT:
            raise UsageError(f"{self.path} is not a Sterling trust file (format {TRUST_FORMAT})")
        try:
            return Trust(tuple(TrustedEnclave.from_json(e) for e in doc.get("enclaves", [])))
        except UsageError as exc:
            raise UsageError(f"{self.path}: {exc}") from None

    def save(self, trust: Trust) -> None:
        doc = {"format": TRUST_FORMAT, "enclaves": [e.to_json() for e in trust.entries]}
        atomic_write(self.path, (json.dumps(doc, indent=1) + "\n").encode())

    def add(self, entry: TrustedEnclave) -> Trust:
        """Trust `entry` from now on (replacing an entry for the same pair); returns the new settings."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        stamped = entry if entry.added else replace(entry, added=now)
        trust = self.load().with_entry(stamped)
        self.save(trust)
        return trust

    def remove(self, measurement: bytes, signer: str | None = None) -> int:
        """Stop trusting `measurement` (with `signer` only, if given); returns how many entries went."""
        before = self.load()
        after = before.without(measurement, signer)
        self.save(after)
        return len(before.entries) - len(after.entries)


@dataclass(frozen=True)
class AttestedEnclave(Enclave):
    """A registered enclave and the attestation signer the chain checked its registration against."""

    signer: str = ""
    block: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "measurement": "0x" + self.measurement.hex(),
            "hpke_public_key": "0x" + self.hpke_public_key.hex(),
            "signer": self.signer,
            "registered_block": self.block,
        }


class _SignerHistory:
    """Replays the registry's signer events: which attestation signer was in force at a given time.

    Each change is announced with the time it takes effect (`AttestationSignerAnnounced`; the
    deployment's signer takes effect at once, and announcing again before then replaces the
    announcement), exactly as the contract decides which key an attestation must be signed by.
    """

    def __init__(self) -> None:
        self.current = ""
        self.pending = ""
        self.pending_at = 0

    def at(self, timestamp: int) -> str:
        return self.pending if self.pending and timestamp >= self.pending_at else self.current

    def announced(self, signer: str, effective_at: int, now: int) -> None:
        self.current, self.pending, self.pending_at = self.at(now), signer, effective_at


def attesting_signers(market: Marketplace) -> dict[str, tuple[str, int]]:
    """Each enclave ever registered -> (signer that attested its newest registration, its block)."""
    history = _SignerHistory()
    times: dict[int, int] = {}

    def time_of(block: int) -> int:
        if block not in times:
            times[block] = int(market.chain.w3.eth.get_block(block)["timestamp"])
        return times[block]

    out: dict[str, tuple[str, int]] = {}
    for ev in market.registry.events():
        if ev.name == "AttestationSignerAnnounced":
            history.announced(str(ev.args["signer"]), int(ev.args["effective_at"]), time_of(ev.block))
        elif ev.name == "EnclaveRegistered":
            signer = str(ev.args.get("signer") or history.at(time_of(ev.block)))
            out[to_checksum_address(str(ev.args["enclave"]))] = (
                to_checksum_address(signer) if signer else "",
                ev.block,
            )
    return out


def attested(enclave: Enclave, signers: dict[str, tuple[str, int]]) -> AttestedEnclave:
    signer, block = signers.get(enclave.address, ("", 0))
    return AttestedEnclave(
        enclave.address, enclave.measurement, enclave.hpke_public_key, enclave.registered, signer, block
    )


def live_attested(market: Marketplace, *, index: MarketIndex | None = None) -> list[AttestedEnclave]:
    """The live enclaves, newest first, each with the signer that attested it.

    With an `index`, candidates are its registered enclaves (synced first, so the cost does not
    grow with the chain's history) and each is still confirmed live on the chain itself;
    without one, the registry's events are read.
    """
    if index is None:
        signers = attesting_signers(market)
        return [attested(e, signers) for e in market.live_enclaves()]
    index.sync(market)
    out = []
    rows = index.enclaves(registered_only=True, limit=100)
    fallback = attesting_signers(market) if any(not row.signer for row in rows) else {}
    for row in rows:
        if not market.is_enclave(row.address):
            continue
        signer = row.signer or fallback.get(row.address, ("", 0))[0]
        e = market.enclave(row.address)
        out.append(
            AttestedEnclave(e.address, e.measurement, e.hpke_public_key, e.registered, signer, row.block)
        )
    return out


@dataclass(frozen=True)
class Refusal:
    """Why one enclave is not trusted."""

    enclave: AttestedEnclave
    reasons: list[str] = field(default_factory=list)

    def describe(self) -> str:
        e = self.enclave
        return (
            f"enclave {e.address} (measurement 0x{e.measurement.hex()}, attested by "
            f"{e.signer or 'an unknown signer'}): {'; '.join(self.reasons)}"
        )


def refusal(enclave: AttestedEnclave, trust: Trust, pins: Iterable[bytes]) -> Refusal | None:
    """Why `enclave` may not be sealed to under `trust` and the listings' `pins`; None when it may."""
    reasons = [
        f"a listing pins measurement 0x{pin.hex()}"
        for pin in pins
        if pin and pin != ZERO32 and pin != enclave.measurement
    ]
    if not enclave.signer:
        reasons.append("the chain shows no attestation signer for its registration")
    elif trust.entry(enclave.measurement, enclave.signer) is None:
        signers = [e.signer for e in trust.entries if e.measurement == enclave.measurement]
        if signers:
            reasons.append(f"you trust this measurement only as attested by {', '.join(signers)}")
        else:
            reasons.append("its measurement and signer are not in your trust settings")
    return Refusal(enclave, reasons) if reasons else None


def _how_to_trust(e: AttestedEnclave) -> str:
    return f"`sterling enclave trust 0x{e.measurement.hex()} --signer {e.signer}`"


def choose_enclave(
    market: Marketplace,
    address: str | None = None,
    *,
    trust: Trust,
    pins: Iterable[bytes] = (),
    index: MarketIndex | None = None,
) -> AttestedEnclave:
    """The enclave to seal to: the one named, else the newest live one that `trust` admits.

    An enclave qualifies only if its measurement and the signer that attested its registration
    are a pair in `trust`, and its measurement equals every non-empty pin in `pins` (the listings'
    pinned measurements). Raises UntrustedEnclave naming each candidate, its measurement, its
    signer and the command that trusts it; NotFound when no enclave is live. With an `index`,
    the candidates come from it (see `live_attested`).
    """
    pins = tuple(pins)
    if address is not None:
        if not is_address(address):
            raise UsageError(f"--enclave is not an address: {address!r}")
        if not market.is_enclave(address):
            raise NotFound(f"{address} is not a registered enclave with an allowed measurement")
        candidates = [attested(market.enclave(address), attesting_signers(market))]
    else:
        candidates = live_attested(market, index=index)
        if not candidates:
            raise NotFound(
                "no registered enclave on this Marketplace to seal the data key to (start one first)"
            )
    refusals = []
    for candidate in candidates:
        why = refusal(candidate, trust, pins)
        if why is None:
            return candidate
        refusals.append(why)
    fixes = sorted({_how_to_trust(r.enclave) for r in refusals if r.enclave.signer})
    raise UntrustedEnclave(
        "refusing to seal to an enclave you have not confirmed: "
        + " | ".join(r.describe() for r in refusals)
        + (
            ". Check the measurement against the enclave's published build and the signer against "
            "the attestation service you rely on, then run " + " or ".join(fixes)
            if fixes
            else ""
        )
    )


@dataclass(frozen=True)
class Announcement:
    """A widening change the registry's admin announced that is not in force yet."""

    kind: str  # "attestation signer" or "measurement"
    value: str
    effective_at: int
    block: int

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value,
            "effective_at": self.effective_at,
            "block": self.block,
        }

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.effective_at, UTC).isoformat(timespec="minutes")
        return f"the admin announced a new {self.kind} {self.value}, in force from {when}"


def announcements(market: Marketplace) -> list[Announcement]:
    """Announced signers and measurements still waiting for their delay, oldest first.

    What a provider watches for: a new signer or measurement widens who can register as an
    enclave, and the registry announces it CHANGE_DELAY ahead so that listings can be withdrawn.
    """
    now = market.chain.now()
    pending = market.pending_signer()
    out = []
    for ev in market.registry.events():
        at = int(ev.args.get("effective_at", 0))
        if at <= now:
            continue
        if ev.name == "AttestationSignerAnnounced" and str(ev.args["signer"]) == pending:
            out.append(Announcement("attestation signer", str(ev.args["signer"]), at, ev.block))
        elif ev.name == "MeasurementAnnounced":
            measurement = bytes(ev.args["measurement"])
            if market.measurement_effective_at(measurement) == at:
                out.append(Announcement("measurement", "0x" + measurement.hex(), at, ev.block))
    return out
