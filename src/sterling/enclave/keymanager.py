"""The key manager: the enclave's secrets, and the one rule for releasing a data key.

It holds two kinds of key, both sealed at rest by the TEE (bound to the
platform and to the enclave's measurement, so other code cannot open them):

- the key-manager HPKE key (X25519), shared by every worker of the same
  measurement on the platform: providers seal data keys to it and consumers
  seal job bodies to it, so any worker can take over a job whose lease ran out;
- each worker's own signing key (an Ethereum account), which registers the
  worker on chain and signs its settlements.

A data key is unsealed only for a job that the chain shows as claimed by
this worker, whose body the verifier and every provider contract accepted
(`approve`), and only for a listing that job uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from eth_account.signers.local import LocalAccount

from sterling.chain.marketplace import Marketplace
from sterling.chain.types import JobState, Listing
from sterling.crypto import seal
from sterling.enclave.tee import TeeBackend
from sterling.errors import EnclaveError, IntegrityError

KEY_MANAGER_FILE = "key-manager.sealed"
KEY_MANAGER_LABEL = "sterling.key-manager.v1"
SIGNING_LABEL = "sterling.worker-signing-key.v1"


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One process at a time creates or reads the enclave's key files (workers may start together)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _load_or_create(tee: TeeBackend, path: Path, label: str) -> bytes:
    with _locked(path.parent):
        if path.exists():
            return tee.load_sealed(path, label=label)
        secret = os.urandom(32)
        tee.save_sealed(path, secret, label=label)
        return secret


def worker_account(tee: TeeBackend, state_dir: Path, name: str) -> LocalAccount:
    """The signing key of worker `name`, created on first use and sealed to this enclave."""
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise EnclaveError(f"worker name {name!r}: use letters, digits, '-', '_' or '.'")
    key = _load_or_create(tee, state_dir / "workers" / f"{name}.sealed", SIGNING_LABEL)
    account: LocalAccount = Account.from_key(key)
    return account


class KeyManager:
    """Opens job bodies and, for approved jobs claimed by this worker, data keys."""

    def __init__(self, tee: TeeBackend, state_dir: Path) -> None:
        raw = _load_or_create(tee, state_dir / KEY_MANAGER_FILE, KEY_MANAGER_LABEL)
        self._private = X25519PrivateKey.from_private_bytes(raw)
        self._approved: set[tuple[str, int]] = set()

    @property
    def public_key(self) -> bytes:
        return seal.public_bytes(self._private)

    def __repr__(self) -> str:  # never show key material
        return f"KeyManager(public_key=0x{self.public_key.hex()})"

    def open(self, sealed: bytes, binding: seal.Binding) -> bytes:
        """Open a value sealed to the key manager (a job body); `IntegrityError` if it is not for here."""
        return seal.unseal(sealed, self._private, binding)

    def approve(self, market: Marketplace, job_id: int) -> None:
        """Record that the verifier and every provider contract accepted `job_id`."""
        self._approved.add((market.address, job_id))

    def forget(self, market: Marketplace, job_id: int) -> None:
        self._approved.discard((market.address, job_id))

    def data_key(self, market: Marketplace, job_id: int, listing: Listing, *, worker: str) -> bytes:
        """The data key of `listing`, only for an approved job the chain shows claimed by `worker`."""
        self._may_release(market, job_id, listing, worker=worker)
        binding = seal.data_key_binding(
            market.chain.chain_id, market.address, listing.data_hash, provider=listing.provider
        )
        try:
            return seal.unseal(listing.sealed_key, self._private, binding)
        except IntegrityError as exc:
            raise IntegrityError(
                f"listing {listing.id}: its sealed data key does not open here ({exc})"
            ) from None

    def record_keys(
        self,
        market: Marketplace,
        job_id: int,
        listing: Listing,
        records: Sequence[tuple[str, bytes, bytes]],
        *,
        worker: str,
    ) -> list[bytes | None]:
        """The keys of contributors' records (contributor, data hash, sealed key) in pool `listing`,
        under the same rule as `data_key`; None for a record whose key does not open here.

        A record's key is bound to its ciphertext and to the contributor who joined with it, as a
        provider's is: a copy joined by anyone else does not open.
        """
        self._may_release(market, job_id, listing, worker=worker)
        chain_id = market.chain.chain_id
        keys: list[bytes | None] = []
        for contributor, data_hash, sealed_key in records:
            binding = seal.data_key_binding(chain_id, market.address, data_hash, provider=contributor)
            try:
                keys.append(seal.unseal(sealed_key, self._private, binding))
            except IntegrityError:
                keys.append(None)
        return keys

    def _may_release(self, market: Marketplace, job_id: int, listing: Listing, *, worker: str) -> None:
        if (market.address, job_id) not in self._approved:
            raise EnclaveError(f"job {job_id} has not passed verification here: no data key is released")
        job = market.job(job_id)
        if job.state is not JobState.CLAIMED or job.enclave.lower() != worker.lower():
            raise EnclaveError(
                f"the chain shows job {job_id} {job.state.label}"
                + (f" by {job.enclave}" if job.state is JobState.CLAIMED else "")
                + f", not claimed by this worker ({worker}): no data key is released"
            )
        if listing.id not in job.listing_ids:
            raise EnclaveError(f"job {job_id} does not use listing {listing.id}: no data key is released")
