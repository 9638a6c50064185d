"""Provider and consumer contracts: what their functions may return, and what it means.

A provider contract defines ``check(request)``; it answers ``True``/``False`` or
``{"accept": bool, "reason": str, "conditions": {...}}``. A consumer contract may define hooks;
today there is one, ``keep(values)``, called after appraisal. Both run in the `Sandbox`; this
module validates their answers into typed values, and anything malformed is a
``ContractError("garbage", ...)`` naming every problem at once.

See docs/contracts.md; example contracts are in ``examples/`` (see `example`).
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from sterling.enclave.sandbox import HostApi, Sandbox
from sterling.errors import ContractError, UsageError
from sterling.privacy.graph import FAMILIES
from sterling.privacy.plan import TrainingPlan

#: Consumer hooks the enclave calls. Planned, not yet called: ``metrics(names)`` (which
#: metrics may leave the enclave) and ``payout(values)`` (how to split the budget).
HOOKS = ("keep",)

_DECISION_KEYS = frozenset({"accept", "reason", "conditions"})
_CONDITION_KEYS = frozenset({"max_epsilon", "model_families"})
_DEFAULT_REASON = "the provider's contract refused the request (it gave no reason)"


@dataclass(frozen=True)
class Conditions:
    """What an accepting provider requires of the job (None: no requirement)."""

    max_epsilon: float | None = None
    model_families: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Decision:
    """A provider contract's answer to one request."""

    accept: bool
    reason: str = ""
    conditions: Conditions = field(default_factory=Conditions)


def check_provider(sandbox: Sandbox, source: str, request: dict[str, Any], *, host: HostApi) -> Decision:
    """Run the provider contract's ``check(request)`` and validate its answer."""
    return decision_from(sandbox.call(source, "check", request, host=host))


def decision_from(value: Any) -> Decision:
    """Validate what ``check`` returned; ContractError ``garbage`` listing every problem."""
    if isinstance(value, bool):
        return Decision(accept=value, reason="" if value else _DEFAULT_REASON)
    if not isinstance(value, dict):
        raise ContractError("garbage", f"check() must return a bool or a dict, not {_describe(value)}")
    problems = [f"unknown key {key!r}" for key in sorted(set(value) - _DECISION_KEYS)]
    accept = value.get("accept")
    if not isinstance(accept, bool):
        problems.append(f"'accept' must be true or false, not {_describe(accept)}")
    reason = value.get("reason", "")
    if not isinstance(reason, str):
        problems.append(f"'reason' must be a string, not {_describe(reason)}")
        reason = ""
    conditions = _conditions(value.get("conditions", {}), problems)
    if accept is False and value.get("conditions"):
        problems.append("a rejection cannot carry conditions")
    if problems:
        raise ContractError("garbage", "check() returned an invalid decision: " + "; ".join(problems))
    if not accept:
        return Decision(accept=False, reason=reason or _DEFAULT_REASON)
    return Decision(accept=True, reason=reason, conditions=conditions)


def _conditions(value: Any, problems: list[str]) -> Conditions:
    if not isinstance(value, dict):
        problems.append(f"'conditions' must be a dict, not {_describe(value)}")
        return Conditions()
    problems.extend(f"unknown condition {key!r}" for key in sorted(set(value) - _CONDITION_KEYS))
    max_epsilon = value.get("max_epsilon")
    if max_epsilon is not None and (
        isinstance(max_epsilon, bool)
        or not isinstance(max_epsilon, int | float)
        or not math.isfinite(max_epsilon)
        or max_epsilon <= 0
    ):
        problems.append(f"'max_epsilon' must be a positive number, not {_describe(max_epsilon)}")
        max_epsilon = None
    families = value.get("model_families")
    if families is not None:
        if not isinstance(families, list) or not all(isinstance(f, str) for f in families):
            problems.append(f"'model_families' must be a list of strings, not {_describe(families)}")
            families = None
        else:
            problems.extend(
                f"unknown model family {f!r} (known: {', '.join(FAMILIES)})"
                for f in families
                if f not in FAMILIES
            )
    return Conditions(
        max_epsilon=None if max_epsilon is None else float(max_epsilon),
        model_families=None if families is None else tuple(families),
    )


def condition_violations(conditions: Conditions, *, epsilon: float, model_family: str) -> list[str]:
    """Every condition the job breaks, each naming the condition, what is asked and what is allowed."""
    violations = []
    if conditions.max_epsilon is not None and epsilon > conditions.max_epsilon:
        violations.append(
            f"max_epsilon: the job asks for ε = {epsilon:g}; "
            f"the provider allows at most {conditions.max_epsilon:g}"
        )
    if conditions.model_families is not None and model_family not in conditions.model_families:
        allowed = ", ".join(conditions.model_families) or "none"
        violations.append(
            f"model_families: the job trains {model_family}; the provider allows only {allowed}"
        )
    return violations


def run_hook(
    sandbox: Sandbox, source: str | None, hook: str, argument: Any, *, host: HostApi | None = None
) -> Any | None:
    """Run a consumer hook and validate its answer; None when there is no source or no such hook.

    ``keep(values)`` gets ``{"<listing id>": value, ...}`` and must return a list of listing ids
    (ints), a subset of the keys, each at most once; run_hook returns it as a list of ints.
    """
    if hook not in HOOKS:
        raise UsageError(f"no consumer hook named {hook!r}; hooks: {', '.join(HOOKS)}")
    if source is None or not sandbox.defines(source, hook):
        return None
    value = sandbox.call(source, hook, argument, host=host)
    return _kept(value, argument)


def _kept(value: Any, values: Any) -> list[int]:
    if not isinstance(value, list):
        raise ContractError("garbage", f"keep() must return a list of listing ids, not {_describe(value)}")
    offered = set(values) if isinstance(values, dict) else set()
    problems = []
    seen: set[int] = set()
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            problems.append(f"{_describe(item)} is not a listing id")
        elif str(item) not in offered:
            problems.append(f"listing {item} was not among those appraised")
        elif item in seen:
            problems.append(f"listing {item} appears twice")
        else:
            seen.add(item)
    if problems:
        raise ContractError("garbage", "keep() returned an invalid list: " + "; ".join(problems))
    return list(value)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def example(name: str) -> str:
    """The source of a shipped example contract, e.g. ``example("hospital_credential")``."""
    path = resources.files("sterling.enclave") / "examples" / f"{name}.py"
    if not path.is_file():
        raise UsageError(f"no example contract named {name!r}; see {', '.join(examples())}")
    return path.read_text(encoding="utf-8")


def examples() -> list[str]:
    """The names of the shipped example contracts."""
    folder = resources.files("sterling.enclave") / "examples"
    return sorted(p.name.removesuffix(".py") for p in folder.iterdir() if p.name.endswith(".py"))


def set_constant(source: str, name: str, value: str | int | float) -> str:
    """`source` with its top-level ``NAME = ...`` assignment replaced by ``NAME = <value>``.

    How a provider (or a test) fills in an example's placeholder, e.g. HOSPITAL's address.

    >>> set_constant('A = "0x0"\\ndef check(r):\\n    return A\\n', "A", "0xabc").splitlines()[0]
    "A = '0xabc'"
    """
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == name
            and node.lineno == node.end_lineno
        ):
            lines = source.splitlines(keepends=True)
            ending = "\n" if lines[node.lineno - 1].endswith("\n") else ""
            lines[node.lineno - 1] = f"{name} = {value!r}{ending}"
            return "".join(lines)
    raise UsageError(f"the contract has no one-line top-level assignment to {name}")


def provider_request(
    job: Any,
    *,
    listing_id: int,
    epsilon: float,
    consumer: str,
    plan: TrainingPlan,
    chain_id: int,
    marketplace: str,
) -> dict[str, Any]:
    """The request a provider contract's ``check`` sees for one listing of `job` (a privacy Job).

    `plan` is the verifier's plan for `job`: what the contract sees of the training is what runs.

    The enclave and the consumer's client build it the same way, so a client can run a
    provider's published contract before submitting and see the answer the enclave will get.
    """
    return {
        "listing_id": listing_id,
        "consumer": consumer,
        "epsilon": epsilon,
        "delta": job.training.delta,
        "model_family": job.model.family,
        "purpose": job.purpose,
        "job_name": job.name,
        "noise_multiplier": plan.noise_multiplier,
        "steps": plan.steps,
        "neighbours": plan.neighbours,
        "credentials": list(job.credentials),
        "chain_id": chain_id,
        "marketplace": marketplace,
    }


def judge(sandbox: Sandbox, source: str, request: dict[str, Any], *, host: HostApi) -> str | None:
    """None when the provider's contract accepts the request and its conditions hold; else why not."""
    try:
        decision = check_provider(sandbox, source, request, host=host)
    except ContractError as exc:
        return f"its contract failed: {exc}"
    if not decision.accept:
        return f"its contract refused: {decision.reason}"
    problems = condition_violations(
        decision.conditions, epsilon=float(request["epsilon"]), model_family=str(request["model_family"])
    )
    return "its contract: " + "; ".join(problems) if problems else None
