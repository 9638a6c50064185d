"""A typed client for Pools: pooled datasets of many contributors, and their payouts by proof.

A pool is one Marketplace listing published by the Pools contract; each contributor joins it with
one sealed record, their own ε cap and their own consent. See docs/pools.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from web3.types import TxReceipt

from sterling.chain.artifacts import load as load_artifact
from sterling.chain.contract import ContractClient, as_bytes
from sterling.chain.node import Chain
from sterling.chain.types import ZERO_ADDRESS, Budget, Listing, Terms
from sterling.errors import NotFound

if TYPE_CHECKING:
    from sterling.chain.marketplace import Marketplace

#: The sealed key a pool's listing carries on the Marketplace: a marker, never unsealed.
POOL_MARKER = b"sterling.pool.v1"


@dataclass(frozen=True)
class Pool:
    listing_id: int
    curator: str
    data_hash: bytes
    total: int  # the budget's total, micro-ε
    members: int
    open: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "listing_id": self.listing_id,
            "curator": self.curator,
            "data_hash": "0x" + self.data_hash.hex(),
            "epsilon_budget_micro": self.total,
            "members": self.members,
            "open": self.open,
        }


@dataclass(frozen=True)
class Member:
    """A contributor's membership, with where their sealed record is (from their `Joined` event)."""

    listing_id: int
    index: int
    account: str
    joined_spent: int
    cap: int
    left: bool
    uri: str = ""
    data_hash: bytes = b""
    sealed_key: bytes = b""

    def spent(self, budget: Budget) -> int:
        """An upper bound on the micro-ε charged to this record (as `Pools.member_spent`)."""
        return min(budget.spent - self.joined_spent, self.cap)

    def admitted(self, budget: Budget) -> bool:
        """Whether a job claimed at `budget`'s state may use this record (as `Pools.admits`)."""
        return not self.left and budget.spent + budget.reserved - self.joined_spent <= self.cap

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "account": self.account,
            "joined_spent_micro": self.joined_spent,
            "cap_micro": self.cap,
            "left": self.left,
            "uri": self.uri,
            "data_hash": "0x" + self.data_hash.hex(),
        }


@dataclass(frozen=True)
class PoolPayout:
    """Where a (job, pool listing) payout stands."""

    finalized: bool
    available: int
    claimed: int
    root: bytes
    total: int
    committer: str


class Pools(ContractClient):
    artifact_name = "Pools"

    @classmethod
    def deploy(cls, chain: Chain, deployer: LocalAccount, *, marketplace: str) -> Pools:
        receipt = cls._deploy(chain, deployer, to_checksum_address(marketplace))
        return cls(chain, str(receipt["contractAddress"]))

    def marketplace(self) -> str:
        return str(self._call("marketplace"))

    def is_genuine(self, marketplace: str) -> bool:
        """Whether the code here is this release's Pools, bound to `marketplace`.

        The enclave trusts a pool's member list only from this code: a look-alike contract could
        list anyone's sealed record as a member of its own pool.
        """
        code = bytes(self.chain.w3.eth.get_code(self.address))
        runtime = bytes.fromhex(load_artifact("Pools").bytecode_runtime.removeprefix("0x"))
        if not code.startswith(runtime):
            return False
        return self.marketplace().lower() == marketplace.lower()

    # ---------------------------------------------------------------- pools

    def create_pool(
        self,
        curator: LocalAccount,
        *,
        data_uri: str,
        data_hash: bytes,
        terms: Terms,
        epsilon_budget: int,
        delta: int,
        contract_hash: bytes = bytes(32),
    ) -> int:
        """Publish a pool listing (this contract its provider); returns the listing id."""
        receipt = self._send(
            curator,
            "create_pool",
            data_uri,
            data_hash,
            contract_hash,
            terms.as_tuple(),
            epsilon_budget,
            delta,
        )
        return int(self._event(receipt, "PoolCreated").args["listing_id"])

    def close_pool(self, curator: LocalAccount, listing_id: int) -> None:
        self._send(curator, "close_pool", listing_id)

    def pool(self, listing_id: int) -> Pool:
        curator, data_hash, total, members, is_open = self._call("pools", listing_id)
        if str(curator) == ZERO_ADDRESS:
            raise NotFound(f"listing {listing_id} is not a pool of {self.address}")
        return Pool(listing_id, str(curator), as_bytes(data_hash), int(total), int(members), bool(is_open))

    def is_pool(self, listing_id: int) -> bool:
        return str(self._call("pools", listing_id)[0]) != ZERO_ADDRESS

    def join(
        self,
        contributor: LocalAccount,
        listing_id: int,
        *,
        uri: str,
        data_hash: bytes,
        sealed_key: bytes,
        cap: int,
    ) -> int:
        """Join with one sealed record and a cap in micro-ε; returns the member index."""
        receipt = self._send(contributor, "join", listing_id, uri, data_hash, sealed_key, cap)
        return int(self._event(receipt, "Joined").args["index"])

    def leave(self, contributor: LocalAccount, listing_id: int) -> None:
        self._send(contributor, "leave", listing_id)

    def member(self, listing_id: int, index: int) -> Member:
        account, joined_spent, cap, left, _ = self._call("members", listing_id, index)
        if str(account) == ZERO_ADDRESS:
            raise NotFound(f"pool {listing_id} has no member {index}")
        return Member(listing_id, index, str(account), int(joined_spent), int(cap), bool(left))

    def member_index(self, listing_id: int, account: str) -> int | None:
        slot = int(self._call("member_slot", listing_id, to_checksum_address(account)))
        return slot - 1 if slot else None

    def member_spent(self, listing_id: int, index: int) -> int:
        return int(self._call("member_spent", listing_id, index))

    def admits(self, listing_id: int, index: int) -> bool:
        return bool(self._call("admits", listing_id, index))

    def members(
        self, listing_id: int, *, to_block: int | str = "latest", from_block: int = 0
    ) -> list[Member]:
        """Every member of the pool as of `to_block`, with their sealed records, in index order."""
        joined: dict[int, Member] = {}
        left: set[int] = set()
        for ev in self.events(from_block=from_block, to_block=to_block):
            if int(ev.args.get("listing_id", -1)) != listing_id:
                continue
            if ev.name == "Joined":
                a = ev.args
                joined[int(a["index"])] = Member(
                    listing_id,
                    int(a["index"]),
                    str(a["account"]),
                    int(a["joined_spent"]),
                    int(a["cap"]),
                    False,
                    str(a["uri"]),
                    as_bytes(a["data_hash"]),
                    as_bytes(a["sealed_key"]),
                )
            elif ev.name == "Left":
                left.add(int(ev.args["index"]))
        return [Member(**{**m.__dict__, "left": m.index in left}) for _, m in sorted(joined.items())]

    def admitted(self, market: Marketplace, listing_id: int, *, block: int | None = None) -> list[Member]:
        """The members a job claimed at `block` (None: the latest) uses: not left, and within their
        cap at that state."""
        data_hash = self.pool(listing_id).data_hash
        owner, total, spent, reserved, delta = market.contract.functions.budgets(data_hash).call(
            block_identifier="latest" if block is None else block
        )
        budget = Budget(str(owner), int(total), int(spent), int(reserved), int(delta))
        members = self.members(listing_id, to_block="latest" if block is None else block)
        return [m for m in members if m.admitted(budget)]

    # -------------------------------------------------------------- payouts

    def commit_payouts(
        self, enclave: LocalAccount, job_id: int, listing_id: int, *, root: bytes, total: int, tree_uri: str
    ) -> TxReceipt:
        return self._send(enclave, "commit_payouts", job_id, listing_id, root, total, tree_uri)

    def finalize(self, caller: LocalAccount, job_id: int, listing_id: int) -> TxReceipt:
        return self._send(caller, "finalize", job_id, listing_id)

    def claim(
        self,
        caller: LocalAccount,
        job_id: int,
        listing_id: int,
        *,
        index: int,
        account: str,
        amount: int,
        proof: Sequence[bytes],
    ) -> TxReceipt:
        return self._send(
            caller, "claim", job_id, listing_id, index, to_checksum_address(account), amount, list(proof)
        )

    def is_claimed(self, job_id: int, listing_id: int, index: int) -> bool:
        return bool(self._call("is_claimed", job_id, listing_id, index))

    def payout(self, job_id: int, listing_id: int) -> PoolPayout:
        finalized, available, claimed = self._call("claimable", job_id, listing_id)
        root, total, committer, _ = self._call("settlements", job_id, listing_id)
        return PoolPayout(
            bool(finalized), int(available), int(claimed), as_bytes(root), int(total), str(committer)
        )

    def tree_uri(self, job_id: int, listing_id: int) -> str | None:
        """Where the enclave stored the committed tree (its last `PayoutsCommitted`), or None."""
        event = self.contract.events.PayoutsCommitted()
        logs = self.chain.w3.eth.get_logs(
            {
                "address": self.address,
                "fromBlock": 0,
                "toBlock": "latest",
                "topics": [
                    event.topic,
                    "0x" + job_id.to_bytes(32, "big").hex(),
                    "0x" + listing_id.to_bytes(32, "big").hex(),
                ],
            }
        )
        found = self.decode_logs(logs)
        return str(found[-1].args["tree_uri"]) if found else None

    def balance_of(self, account: str) -> int:
        return int(self._call("balances", to_checksum_address(account)))

    def withdraw(self, account: LocalAccount) -> int:
        receipt = self._send(account, "withdraw")
        return int(self._event(receipt, "Withdrawal").args["amount"])

    def liabilities(self) -> int:
        return int(self._call("liabilities"))

    def ether_balance(self) -> int:
        return int(self.chain.w3.eth.get_balance(self.address))


def pool_of(market: Marketplace, listing: Listing) -> Pools | None:
    """The Pools contract of a pool listing (its provider), if it is genuine and bound to `market`."""
    if listing.sealed_key != POOL_MARKER:
        return None
    pools = Pools(market.chain, listing.provider)
    if not pools.exists() or not pools.is_genuine(market.address) or not pools.is_pool(listing.id):
        return None
    return pools
