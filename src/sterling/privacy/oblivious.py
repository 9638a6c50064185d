"""Data-oblivious batch gathering: the sampled rows into a batch of fixed capacity, by dense selection.

The addresses a gather touches must not depend on which rows were sampled,
so rows are never indexed by a sampled index: every output slot is a 0/1
combination of rows, a matrix product whose shape depends on the row count
and the sampling rate alone. One such product from all n rows to a capacity
of C slots costs n·C multiply-adds per column. Two stages cost less: first
each block of b rows into its own capacity c_b (n·c_b), then the (n/b)·c_b
partial slots into the final C ((n/b)·c_b·C). For 2,048 rows at q = 1/8
(C = 347), blocks of 128 (c_b = 40) need 2.3× fewer multiply-adds; measured,
one thread, best of 15: 21.7 ms against 41.0 ms for one 347×2,048 selection
of the 2,368-wide rows. Every block
and slot is computed every step, filled or not, and the results are
identical to the one-stage gather (each slot sums exactly one row and zeros).

Capacities are the expected count plus six standard deviations: a block or
a batch overflows with probability about 10⁻⁹, and then its surplus rows
are dropped, which can only lower any example's influence on the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BLOCKS = (64, 128, 256, 512)


def capacity(n: int, q: float) -> int:
    """Slots for n rows each sampled with probability q: expected count plus six standard deviations."""
    mean = n * q
    return min(n, math.ceil(mean + 6 * math.sqrt(mean * (1 - q)) + 1))


@dataclass(frozen=True)
class Plan:
    """How to gather from `rows` rows (padded to whole blocks) into `capacity` slots."""

    rows: int
    capacity: int
    block: int  # rows per block; equal to `padded` for a one-stage gather
    block_capacity: int
    padded: int  # rows rounded up to whole blocks (zero rows, never sampled)

    @property
    def blocks(self) -> int:
        return self.padded // self.block


def plan(n: int, q: float) -> Plan:
    """The cheapest gather for n rows at rate q, counted in multiply-adds; it depends on n and q only."""
    cap = capacity(n, q)
    best = Plan(n, cap, n, cap, n)
    best_cost = n * cap
    for b in BLOCKS:
        if b >= n:
            break
        padded = -(-n // b) * b
        cb = capacity(b, q)
        cost = padded * cb + (padded // b) * cb * cap
        if cost < best_cost:
            best, best_cost = Plan(n, cap, b, cb, padded), cost
    return best


def _selection(mask: torch.Tensor, slots: int, dtype: torch.dtype) -> torch.Tensor:
    """(k, slots, m) 0/1 matrices: slot s of group k takes the s-th set entry of mask[k] (k × m)."""
    slot = torch.cumsum(mask.long(), dim=1) - 1
    where = torch.arange(slots, device=mask.device)[None, :, None]
    return ((slot[:, None, :] == where) & mask[:, None, :]).to(dtype)


def gather(p: Plan, rows: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampled rows of `rows` (p.padded × d) in the first slots of a p.capacity × d batch.

    Also returns each slot's weight: 1 if a row fills it, else 0. `mask` has p.rows entries.
    """
    if p.padded > p.rows:
        mask = torch.cat([mask, mask.new_zeros(p.padded - p.rows)])
    if p.blocks == 1:
        picked = _selection(mask[None], p.capacity, rows.dtype)[0] @ rows
        total = mask.sum()
    else:
        per_block = mask.view(p.blocks, p.block)
        stage = torch.bmm(
            _selection(per_block, p.block_capacity, rows.dtype), rows.view(p.blocks, p.block, -1)
        ).view(p.blocks * p.block_capacity, -1)
        counts = per_block.sum(dim=1, keepdim=True)
        filled = torch.arange(p.block_capacity, device=mask.device)[None, :] < counts
        picked = _selection(filled.view(1, -1), p.capacity, rows.dtype)[0] @ stage
        total = filled.sum()  # rows past a full block's capacity were dropped
    weight = (torch.arange(p.capacity, device=mask.device) < total).to(rows.dtype)
    return picked, weight
