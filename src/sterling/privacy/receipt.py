"""The privacy receipt: what ran on each listing's data, so anyone can recompute what it cost.

The paper promises a budget tracker "which does not require trust
assumptions". The chain can check that a charge stays within a reservation,
but not that the charge is right: ε is a function of the mechanisms that ran
(σ, q, steps, every release's ε and sensitivity), which the chain never
sees. So the enclave writes them down. At settlement (or a failure after
the data keys were released) it stores a receipt, a JSON document holding:

- the `TrainingPlan` the verifier approved (its sha256 is in the receipt);
- per listing, every mechanism that touched that listing's data, and the ε
  they compose to under replace-one adjacency at the plan's δ, and the
  micro-ε charged for it (rounded up);
- the outcome (a model, no model, or a failure).

Its sha256 is signed into the settlement and emitted on chain with its URI
(`JobCompleted`/`JobFailed`). `sterling privacy receipt JOB_ID` fetches it,
checks its hash against the chain, checks that every mechanism is one the
plan allows, recomputes each listing's ε with dp-accounting from the receipt
alone, and compares it with the micro-ε the chain charged.

What the receipt cannot show is that the enclave ran what it says: that is
the attestation's job (the measurement is of this code, which writes the
receipt from the same objects it executes). What it does show, to anyone,
is that the charge is exactly the ε of the mechanisms named, under the
stated adjacency, and that those are the ones the verifier approved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from sterling.chain.units import charge_micro
from sterling.errors import UsageError
from sterling.jsontext import MAX_DEPTH, too_deep
from sterling.privacy import mechanisms as mech
from sterling.privacy.mechanisms import DpSgd, Mechanism
from sterling.privacy.plan import TrainingPlan

FORMAT = "sterling.privacy-receipt/1"
Outcome = Literal["model", "no_model", "failed"]
#: Recomputed and charged ε may differ by this many micro-ε (floating point across machines).
TOLERANCE_MICRO = 1
#: A mechanism that ran under an earlier holder of the job is named with this prefix.
PRIOR = "prior."


@dataclass(frozen=True)
class Charge:
    listing_id: int
    mechanisms: tuple[Mechanism, ...]
    epsilon: float
    micro_epsilon: int

    def to_json(self) -> dict[str, Any]:
        return {
            "listing_id": self.listing_id,
            "mechanisms": [mech.to_json(m) for m in self.mechanisms],
            "epsilon": self.epsilon,
            "micro_epsilon": self.micro_epsilon,
        }


@dataclass(frozen=True)
class Receipt:
    chain_id: int
    marketplace: str
    job_id: int
    outcome: Outcome
    plan: TrainingPlan
    charges: tuple[Charge, ...]
    format: str = FORMAT

    @classmethod
    def build(
        cls,
        *,
        chain_id: int,
        marketplace: str,
        job_id: int,
        outcome: Outcome,
        plan: TrainingPlan,
        ran: Sequence[Sequence[Mechanism]],
    ) -> Receipt:
        """The receipt for `ran[i]`, the mechanisms that touched listing i's data (in plan order)."""
        if len(ran) != len(plan.listings):
            raise UsageError(f"a receipt needs one list of mechanisms per listing ({len(plan.listings)})")
        charges = []
        for lid, mechs in zip(plan.listings, ran, strict=True):
            eps = plan.epsilon(mechs)
            charges.append(Charge(lid, tuple(mechs), eps, charge_micro(eps)))
        return cls(chain_id, marketplace, job_id, outcome, plan, tuple(charges))

    @property
    def micro_epsilon(self) -> list[int]:
        """What the chain is charged per listing, in the order of the job's allocations."""
        return [c.micro_epsilon for c in self.charges]

    @property
    def charged_anything(self) -> bool:
        return any(c.mechanisms for c in self.charges)

    # ------------------------------------------------------------ identity

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "chain_id": self.chain_id,
            "marketplace": self.marketplace,
            "job_id": self.job_id,
            "outcome": self.outcome,
            "plan": self.plan.to_json(),
            "plan_sha256": "0x" + self.plan.sha256().hex(),
            "neighbours": self.plan.neighbours,
            "delta": self.plan.delta,
            "charges": [c.to_json() for c in self.charges],
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    def sha256(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Receipt:
        """A receipt from its stored bytes; a UsageError says what is wrong with them."""
        if too_deep(raw) is not None:
            raise UsageError(f"a privacy receipt nests deeper than {MAX_DEPTH} levels")
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise UsageError("a privacy receipt is JSON; these bytes are not") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise UsageError("not a Sterling privacy receipt")
        plan = TrainingPlan.from_json(doc.get("plan"))
        try:
            charges = tuple(
                Charge(
                    int(c["listing_id"]),
                    tuple(mech.from_json(m) for m in c["mechanisms"]),
                    float(c["epsilon"]),
                    int(c["micro_epsilon"]),
                )
                for c in doc["charges"]
            )
            outcome = doc["outcome"]
            if outcome not in ("model", "no_model", "failed"):
                raise ValueError(f"unknown outcome {outcome!r}")
            receipt = cls(
                int(doc["chain_id"]), str(doc["marketplace"]), int(doc["job_id"]), outcome, plan, charges
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"a privacy receipt: {type(exc).__name__}: {exc}") from None
        if doc.get("plan_sha256") != "0x" + plan.sha256().hex():
            raise UsageError("the receipt's plan does not match the plan hash it states")
        return receipt

    # --------------------------------------------------------------- check

    def recompute(self) -> list[float]:
        """Each listing's ε, recomputed from the receipt alone (dp-accounting, replace-one, PLD)."""
        return [self.plan.epsilon(c.mechanisms) for c in self.charges]

    def problems(self, charged: Sequence[int] | None = None) -> list[str]:
        """What is wrong with this receipt, against the chain's `charged` micro-ε if given; [] if nothing."""
        out = []
        if [c.listing_id for c in self.charges] != list(self.plan.listings):
            out.append("the receipt's listings are not the plan's")
        for c in self.charges:
            out += [f"listing {c.listing_id}: {p}" for p in _unplanned(self.plan, c.mechanisms)]
        for c, eps in zip(self.charges, self.recompute(), strict=True):
            if abs(charge_micro(eps) - c.micro_epsilon) > TOLERANCE_MICRO:
                out.append(
                    f"listing {c.listing_id}: its mechanisms compose to ε {eps:.6f} "
                    f"({charge_micro(eps)} micro-ε), but the receipt charges {c.micro_epsilon}"
                )
        if charged is not None:
            if len(charged) != len(self.charges):
                out.append(f"the chain charged {len(charged)} listings, the receipt {len(self.charges)}")
            for c, on_chain in zip(self.charges, charged, strict=False):
                if abs(on_chain - c.micro_epsilon) > TOLERANCE_MICRO:
                    out.append(
                        f"listing {c.listing_id}: the chain charged {on_chain} micro-ε, "
                        f"the receipt accounts for {c.micro_epsilon}"
                    )
        return out


def _unplanned(plan: TrainingPlan, mechanisms: Sequence[Mechanism]) -> list[str]:
    """Mechanisms the plan does not allow: a DP-SGD run other than its own, or a release it lacks."""
    out = []
    for m in mechanisms:
        name = m.name.removeprefix(PRIOR).split(".", 1)[-1] if m.name.startswith(PRIOR) else m.name
        if isinstance(m, DpSgd):
            own = replace(plan.run, name=m.name, steps=m.steps)
            limit = plan.pilot_steps if name == "pilot" and plan.pilot_steps else plan.steps
            if m != own or name not in ("training", "pilot") or not 0 <= m.steps <= limit:
                out.append(f"{m.name}: a DP-SGD run the plan does not allow ({m})")
        elif replace(m, name=name) not in plan.releases:
            out.append(f"{m.name}: a release the plan does not allow ({m})")
    return out


def prior_name(holder: int, m: Mechanism) -> Mechanism:
    """`m` as it ran under an earlier holder of the job (number `holder`)."""
    return replace(m, name=f"{PRIOR}{holder}.{m.name}")
