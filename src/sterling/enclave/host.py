"""The host API a sandboxed contract reaches the world through, bound to one job and listing.

A contract may read the job (its public view) and the listing, make view
calls on chain (never a transaction), and recover the signer of a message.
Every argument from the contract is validated here: it is untrusted code.
"""

from __future__ import annotations

import re
from typing import Any

from eth_abi.abi import decode, encode
from eth_utils.address import is_address, to_checksum_address
from eth_utils.crypto import keccak

from sterling.chain.marketplace import Marketplace
from sterling.crypto import signing
from sterling.errors import ChainError, IntegrityError, UsageError

#: Gas for one view call. A policy or credential check costs tens of thousands; the cap bounds how
#: long one call can keep the worker outside the sandbox's wall clock, which runs only in wasm code
#: (without it, one call to a view that loops ran for 20 s on the embedded EVM).
CHAIN_CALL_GAS = 1_000_000

#: ``name(type,...)(type,...)``: a function, its argument types and its return types.
_SIGNATURE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\(([^()]*)\)\(([^()]*)\)$")
_TYPES = re.compile(
    r"^(address|bool|string|bytes([1-9]|[12][0-9]|3[0-2])?|u?int(8|16|32|64|128|256)?)(\[\])?$"
)


def _types(text: str) -> list[str]:
    types = [t.strip() for t in text.split(",") if t.strip()]
    for t in types:
        if not _TYPES.match(t):
            raise UsageError(f"chain_call: unsupported ABI type {t!r}")
    return types


def _plain(value: Any) -> Any:
    """ABI-decoded values as JSON: bytes as 0x-hex, tuples as lists."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


class ChainHost:
    """`HostApi` for one contract run: the job and listing it judges, and read-only chain access."""

    def __init__(self, market: Marketplace, *, job: dict[str, Any], listing: dict[str, Any]) -> None:
        self.market = market
        self._job = job
        self._listing = listing

    def job(self) -> dict[str, Any]:
        return self._job

    def listing(self) -> dict[str, Any]:
        return self._listing

    def chain_call(self, address: str, signature: str, args: list[Any]) -> Any:
        """A view call such as ``chain_call(registry, "holds(address)(bool)", [consumer])``."""
        if not isinstance(address, str) or not is_address(address):
            raise UsageError(f"chain_call: not an address: {address!r}")
        match = _SIGNATURE.match(signature.replace(" ", "")) if isinstance(signature, str) else None
        if match is None:
            raise UsageError(
                f"chain_call: signature must look like name(types)(return types), got {signature!r}"
            )
        name, arg_text, ret_text = match.groups()
        arg_types, ret_types = _types(arg_text), _types(ret_text)
        if not isinstance(args, list) or len(args) != len(arg_types):
            raise UsageError(f"chain_call: {name} takes {len(arg_types)} arguments")
        prepared = [
            bytes.fromhex(a.removeprefix("0x")) if t.startswith("bytes") and isinstance(a, str) else a
            for t, a in zip(arg_types, args, strict=True)
        ]
        try:
            data = keccak(text=f"{name}({','.join(arg_types)})")[:4] + encode(arg_types, prepared)
        except (TypeError, ValueError, OverflowError) as exc:
            raise UsageError(f"chain_call: arguments do not fit {arg_types}: {exc}") from None
        call = {"to": to_checksum_address(address), "data": "0x" + data.hex(), "gas": CHAIN_CALL_GAS}
        raw = self.market.chain.transactor.call(
            lambda: self.market.chain.w3.eth.call(call),  # type: ignore[arg-type]
            name,
        )
        try:
            values = decode(ret_types, bytes(raw))
        except Exception as exc:  # eth_abi raises several kinds for short or malformed data
            raise ChainError(f"chain_call: {name} returned data that is not {ret_types}") from exc
        out = [_plain(v) for v in values]
        return out[0] if len(out) == 1 else out

    def recover(self, message: str, signature: str) -> str:
        """The address that signed the text `message` (EIP-191), as a checksum address."""
        if not isinstance(message, str) or not isinstance(signature, str):
            raise UsageError("recover takes a text message and a hex signature")
        try:
            raw = bytes.fromhex(signature.removeprefix("0x"))
        except ValueError:
            raise UsageError("recover: the signature is not hex") from None
        try:
            return signing.recover(message.encode(), raw)
        except IntegrityError as exc:
            raise UsageError(f"recover: {exc}") from None
