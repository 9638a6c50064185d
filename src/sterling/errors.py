"""One error tree. Every error Sterling raises derives from `SterlingError`.

Each class carries the process exit code the CLI uses for it, and those that
are also a builtin kind of error inherit it too (as web3.py does), so callers
may catch either.
"""

from __future__ import annotations


class SterlingError(Exception):
    """Root of every error Sterling raises on purpose."""

    exit_code: int = 1


class UsageError(SterlingError, ValueError):
    """The caller asked for something malformed: a bad argument, file or body."""

    exit_code = 2


class ConfigError(SterlingError):
    """A setting is missing or invalid."""

    exit_code = 3


class ChainError(SterlingError):
    """Talking to the chain failed."""

    exit_code = 4


class ChainUnavailable(ChainError, ConnectionError):
    """The node could not be reached or started."""


class DeploymentNotFound(ChainError, LookupError):
    """No Marketplace is deployed where one was expected."""


class ContractRevert(ChainError):
    """A transaction or call was reverted by a contract.

    `reason` is the contract's revert message (for Sterling's own contracts it
    starts with the module name, e.g. ``marketplace: budget exhausted``).
    """

    def __init__(self, reason: str, *, function: str = "", tx_hash: str | None = None) -> None:
        self.reason = reason
        self.function = function
        self.tx_hash = tx_hash
        where = f"{function}: " if function else ""
        super().__init__(f"{where}reverted: {reason}")


class DatasetError(UsageError):
    """A dataset file is malformed; the message names the file, the row or image, and the problem."""


class IntegrityError(SterlingError):
    """Ciphertext, a sealed key, a blob or a signature failed authentication.

    Nothing derived from the unauthenticated input has been handed out or written.
    """

    exit_code = 6


class KeyStoreError(SterlingError):
    """A key file could not be read, decrypted or written."""

    exit_code = 7


class NotFound(SterlingError, LookupError):
    """A listing, job, enclave or file that was asked for does not exist."""

    exit_code = 5


class EnclaveError(SterlingError):
    """The enclave refused or could not do something (attestation, sealing, a key for an unclaimed job)."""

    exit_code = 8


class ContractError(SterlingError):
    """A provider or consumer contract (sandboxed Python) could not be run to a valid answer.

    `kind` says how it failed: ``syntax``, ``forbidden`` (imports a module or calls a builtin the
    sandbox does not offer, e.g. ``os`` or ``open``), ``fuel`` (ran too long: loops forever),
    ``memory``, ``timeout`` (wall clock), ``raised`` (an exception in the contract),
    ``garbage`` (returned something that is not a valid answer), ``oversized`` (result too big),
    or ``missing`` (the function it must define is absent).
    """

    exit_code = 9

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(f"contract {kind}: {message}")
