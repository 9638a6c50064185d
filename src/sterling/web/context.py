"""What every request handler shares: the Marketplace, the index, the blob store, dev accounts, a write lock.

A `WebContext` is built once, before the app: `sterling serve` connects to a node
(`WebContext.connect`); tests build one over an embedded chain. Chain writes (publish, submit,
cancel) from concurrent requests take `write_lock`, so two requests signing as one account never
race for a nonce; reads run concurrently. Lists are read from one `MarketIndex` per app, synced
incrementally before each read (a look at the chain's head when nothing happened).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account.signers.local import LocalAccount

from sterling.chain.marketplace import Marketplace
from sterling.config import Settings
from sterling.crypto.keys import derived_x25519
from sterling.errors import UsageError
from sterling.index import MarketIndex
from sterling.sdk.trust import Trust, TrustFile
from sterling.storage.blobs import BlobStore

DEFAULT_MAX_UPLOAD_MB = 64


@dataclass
class WebContext:
    market: Marketplace
    store: BlobStore
    state_dir: Path
    settings: Settings | None = None
    #: The enclaves this server's clients seal to; None: the trust settings in Sterling's home.
    trust: Trust | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20
    #: Seconds between looks at the chain while streaming a job's progress.
    poll_seconds: float = 0.5
    #: Seconds between keep-alive comments on an idle event stream.
    keepalive_seconds: float = 15.0
    write_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: The index database (None: SQLite in Sterling's home, or in `state_dir` without settings).
    index_url: str | None = None
    _index: MarketIndex | None = field(default=None, repr=False)
    _index_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _keys: dict[str, X25519PrivateKey] = field(default_factory=dict, repr=False)
    #: Decrypted results of completed jobs (they never change), so a polling page decrypts once.
    results: dict[int, dict[str, Any] | None] = field(default_factory=dict, repr=False)

    def indexed(self) -> MarketIndex:
        """The app's index, brought up to the chain's head first (cheap when nothing changed)."""
        with self._index_lock:
            if self._index is None:
                home = self.settings.home if self.settings is not None else self.state_dir
                self._index = MarketIndex.open(self.index_url, home=home)
        self._index.sync(self.market)
        return self._index

    @property
    def accounts(self) -> list[LocalAccount]:
        """The local chain's development accounts (none on a real network)."""
        return list(self.market.chain.dev_accounts)

    def account(self, index: int) -> LocalAccount:
        """Dev account `index`; UsageError (400) naming the valid range otherwise."""
        accounts = self.accounts
        if not accounts:
            raise UsageError("this chain has no development accounts to sign with")
        if not 0 <= index < len(accounts):
            raise UsageError(
                f"account must be a dev account index from 0 to {len(accounts) - 1}, got {index}"
            )
        return accounts[index]

    def client_trust(self) -> Trust:
        """What publishing and submitting seal to: `trust`, else `sterling enclave trust`'s file."""
        if self.trust is not None:
            return self.trust
        return TrustFile.in_home(self.settings.home).load() if self.settings is not None else Trust()

    def consumer_key(self, account: LocalAccount) -> X25519PrivateKey:
        """The X25519 key a dev account's models are sealed to (derived, as the CLI's --dev-account)."""
        key = self._keys.get(account.address)
        if key is None:
            key = self._keys[account.address] = derived_x25519(account)
        return key

    def dev_account_for(self, address: str) -> LocalAccount | None:
        return next((a for a in self.accounts if a.address.lower() == address.lower()), None)

    @classmethod
    def connect(
        cls,
        settings: Settings,
        *,
        rpc_url: str | None,
        marketplace: str | None,
        state: Path | None,
        store: str | None = None,
        max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB,
        index_url: str | None = None,
    ) -> WebContext:
        """Connect as the CLI does: options, then $STERLING_RPC_URL and the recorded deployment."""
        from sterling.cli.common import connect_market

        market = connect_market(settings, rpc_url, marketplace, state)
        return cls(
            market=market,
            store=BlobStore(store or settings.store_url),
            state_dir=state or settings.chain_state,
            settings=settings,
            max_upload_bytes=max_upload_mb << 20,
            index_url=index_url,
        )
