"""Merkle trees of pool payouts, as `Pools.claim` verifies them.

A leaf is ``keccak256(abi_encode(job_id, listing_id, index, account, amount))``; an inner node is
the keccak256 of its two children in ascending order (sorted pairs, as OpenZeppelin's
`MerkleProof` and Uniswap's `MerkleDistributor`), so a proof is just the list of siblings. A level
of odd length carries its last node up unchanged. A leaf is 160 bytes hashed and an inner node 64,
so no inner node can pass for a leaf.

The tree is public (its JSON goes to storage beside the settlement): it names every paid
contributor and their amount, nothing else.

>>> tree = PayoutTree.build(job_id=1, listing_id=2, payees=[("0x" + "11" * 20, 5), ("0x" + "22" * 20, 7)])
>>> tree.total, len(tree.leaves)
(12, 2)
>>> verify(tree.root, tree.leaves[1].hash(), tree.proof(1))
True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_utils.address import is_address, to_checksum_address
from eth_utils.crypto import keccak

from sterling.errors import IntegrityError, UsageError

TREE_FORMAT = "sterling.pool-payouts/1"


def hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


@dataclass(frozen=True)
class Leaf:
    """One contributor's payout of one job on one pool listing."""

    job_id: int
    listing_id: int
    index: int
    account: str
    amount: int

    def hash(self) -> bytes:
        return keccak(
            abi_encode(
                ["uint256", "uint256", "uint256", "address", "uint256"],
                [self.job_id, self.listing_id, self.index, to_checksum_address(self.account), self.amount],
            )
        )

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "account": self.account, "amount": str(self.amount)}


def _levels(hashes: Sequence[bytes]) -> list[list[bytes]]:
    levels = [list(hashes)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [hash_pair(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        levels.append(above)
    return levels


def verify(root: bytes, leaf: bytes, proof: Sequence[bytes]) -> bool:
    """Whether `proof` takes `leaf` to `root` (what the contract checks)."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node == root


@dataclass(frozen=True)
class PayoutTree:
    """Every leaf of one (job, pool listing) payout and the tree over them."""

    job_id: int
    listing_id: int
    leaves: tuple[Leaf, ...]
    levels: tuple[tuple[bytes, ...], ...]

    @classmethod
    def build(cls, *, job_id: int, listing_id: int, payees: Sequence[tuple[str, int]]) -> PayoutTree:
        """A tree whose leaf `i` pays `payees[i]` (account, wei); indices are the positions given."""
        return cls.of_leaves(
            job_id=job_id,
            listing_id=listing_id,
            leaves=[
                Leaf(job_id, listing_id, i, account, amount) for i, (account, amount) in enumerate(payees)
            ],
        )

    @classmethod
    def of_leaves(cls, *, job_id: int, listing_id: int, leaves: Sequence[Leaf]) -> PayoutTree:
        """A tree over `leaves`, which may skip indices (a pool's excluded members are not paid)."""
        if not leaves:
            raise UsageError("a payout tree needs at least one leaf")
        problems = []
        seen: set[int] = set()
        for leaf in leaves:
            if (leaf.job_id, leaf.listing_id) != (job_id, listing_id):
                problems.append(f"leaf {leaf.index} is for another job or listing")
            if not is_address(leaf.account):
                problems.append(f"leaf {leaf.index}: {leaf.account!r} is not an address")
            if isinstance(leaf.amount, bool) or not isinstance(leaf.amount, int) or leaf.amount < 0:
                problems.append(f"leaf {leaf.index}: the amount must be whole wei ≥ 0")
            if leaf.index < 0 or leaf.index in seen:
                problems.append(f"leaf index {leaf.index} is negative or repeated")
            seen.add(leaf.index)
        if problems:
            raise UsageError("invalid payout tree: " + "; ".join(problems))
        levels = _levels([leaf.hash() for leaf in leaves])
        return cls(job_id, listing_id, tuple(leaves), tuple(tuple(level) for level in levels))

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    @property
    def total(self) -> int:
        return sum(leaf.amount for leaf in self.leaves)

    def position(self, index: int) -> int:
        """Where the leaf of member `index` sits in the tree."""
        for i, leaf in enumerate(self.leaves):
            if leaf.index == index:
                return i
        raise UsageError(f"no leaf for index {index} in the payouts of job {self.job_id}")

    def proof(self, position: int) -> list[bytes]:
        """The siblings from leaf `position` (its place in `leaves`) to the root."""
        if not 0 <= position < len(self.leaves):
            raise UsageError(f"no leaf at position {position} (the tree has {len(self.leaves)})")
        out = []
        for level in self.levels[:-1]:
            sibling = position ^ 1
            if sibling < len(level):
                out.append(level[sibling])
            position //= 2
        return out

    def leaf_for(self, account: str) -> Leaf | None:
        wanted = account.lower()
        return next((leaf for leaf in self.leaves if leaf.account.lower() == wanted), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": TREE_FORMAT,
            "job_id": self.job_id,
            "listing_id": self.listing_id,
            "root": "0x" + self.root.hex(),
            "total": str(self.total),
            "leaves": [leaf.to_json() for leaf in self.leaves],
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, doc: Any) -> PayoutTree:
        """The tree a document describes, rebuilt and checked against the root it states."""
        if not isinstance(doc, dict) or doc.get("format") != TREE_FORMAT:
            raise IntegrityError("not a Sterling pool payout tree")
        try:
            job_id, listing_id = int(doc["job_id"]), int(doc["listing_id"])
            leaves = [
                Leaf(job_id, listing_id, int(x["index"]), str(x["account"]), int(x["amount"]))
                for x in doc["leaves"]
            ]
            stated = bytes.fromhex(str(doc["root"]).removeprefix("0x"))
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"malformed pool payout tree: {exc}") from None
        try:
            tree = cls.of_leaves(job_id=job_id, listing_id=listing_id, leaves=leaves)
        except UsageError as exc:
            raise IntegrityError(str(exc)) from None
        if tree.root != stated:
            raise IntegrityError("the payout tree's leaves do not hash to the root it states")
        return tree

    @classmethod
    def from_bytes(cls, raw: bytes) -> PayoutTree:
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise IntegrityError("a pool payout tree must be JSON") from None
        return cls.from_json(doc)
