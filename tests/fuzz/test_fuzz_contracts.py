"""Contract sources (enclave/sandbox.py, enclave/contracts.py): static checks, answers, and real runs.

Sources come from providers and consumers. The static checks turn any text into a syntax tree or
a ContractError; a contract's answer, whatever JSON it is, becomes a Decision or a ContractError
``garbage`` naming the key; and a run in the WebAssembly sandbox (few examples: each is a fresh
instance) ends in a value or a ContractError, with the host process alive.
"""

from __future__ import annotations

import json
import math

from fuzzkit import fuzz, mutated, outcome
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st

from sterling.enclave.contracts import Decision, decision_from, examples, run_hook
from sterling.enclave.contracts import example as shipped
from sterling.enclave.sandbox import Limits, Sandbox, check_source
from sterling.errors import ContractError

KINDS = {"syntax", "forbidden", "fuel", "memory", "timeout", "raised", "garbage", "oversized", "missing"}
SOURCES = [shipped(name) for name in examples()]
SNIPPETS = st.sampled_from(
    [
        "import os\n", "from sys import path\n", "open('x')\n", "__import__('os')\n",
        "x = (" * 300 + ")" * 300,
        "def check(r):\n  return r.__class__.__subclasses__()\n", "\x00", "\ud800", "\t\t  bad indent\n",
        "def __sterling_call(a, b):\n    return 1\n", "from . import x\n", "import json, math\n",
        "lambda: globals()\n", "'''", "\\", "if True:\n", "x = 1 +\n", "😀 = 1\n",
        "async def check(r): pass\n",
    ]
)  # fmt: skip


@st.composite
def sources(draw: st.DrawFn) -> str:
    """A shipped contract with lines inserted, deleted or cut short, or text of any kind."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(st.characters(codec=None, exclude_categories=()), max_size=200))
    lines = draw(st.sampled_from(SOURCES)).splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines)))
        how = draw(st.sampled_from(["insert", "delete", "cut"]))
        if how == "insert":
            lines.insert(at, draw(SNIPPETS))
        elif how == "delete" and at < len(lines):
            del lines[at]
        elif at < len(lines):
            lines[at] = lines[at][: draw(st.integers(0, len(lines[at])))]
    return "".join(lines)


@fuzz(150)
@given(sources())
@example("x = '\ud800'\n")  # found by fuzzing: a lone surrogate raised UnicodeEncodeError
@example("x = " + "[" * 5000 + "]" * 5000)
def test_static_checks_give_a_tree_or_a_contract_error(source):
    tree = outcome(lambda: check_source(source), ContractError)
    if isinstance(tree, ContractError):
        assert tree.kind in {"syntax", "forbidden", "oversized"}
        assert str(tree).removeprefix(f"contract {tree.kind}: ").strip()
        if tree.kind == "forbidden":
            assert "line " in str(tree)


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=10,
)
VALID = {"accept": True, "reason": "ok", "conditions": {"max_epsilon": 1.5, "model_families": ["mlp", "cnn"]}}


@fuzz(150)
@given(st.one_of(JSON, mutated(VALID).map(lambda case: case[0])))
@example({"accept": True, "conditions": {"max_epsilon": math.nan}})
@example({"accept": True, "conditions": {"max_epsilon": True}})
def test_any_answer_of_check_is_a_decision_or_garbage(value):
    decision = outcome(lambda: decision_from(value), ContractError)
    if isinstance(decision, ContractError):
        assert decision.kind == "garbage"
        assert "check() " in str(decision)
        return
    assert isinstance(decision, Decision)
    assert decision.accept or decision.reason  # a refusal always says why
    c = decision.conditions
    assert c.max_epsilon is None or (math.isfinite(c.max_epsilon) and c.max_epsilon > 0)


# A fresh WebAssembly instance per run (~0.1 s each, and the module compiles once, ~1.5 s): few examples.
SANDBOX = Sandbox(Limits(fuel=20_000_000, wall_seconds=1.0))
BODIES = st.one_of(
    JSON.map(lambda v: f"    return {v!r}\n"),
    st.sampled_from(
        [
            "    while True:\n        pass\n",
            "    return [0] * 10**7\n",
            "    raise ValueError('no')\n",
            "    return check(r)\n",
            "    return r['missing']\n",
            "    return float('nan')\n",
            "    return {1: 2}\n",
            "    return 'x' * 100000\n",
            "    print('x' * 300000)\n    return True\n",
            "    import json\n    return json.loads('[' * 100 + ']' * 100)\n",
        ]
    ),
)


@fuzz(8, suppress_health_check=[HealthCheck.too_slow])  # each example runs the sandbox
@given(BODIES, st.sampled_from([{"listing_id": 1, "epsilon": 1.0}, {}, {"x": "é" * 50}]))
def test_running_any_check_ends_in_a_decision_or_a_contract_error(body, request):
    source = "def check(r):\n" + body
    decision = outcome(lambda: decision_from(SANDBOX.call(source, "check", request)), ContractError)
    if isinstance(decision, ContractError):
        assert decision.kind in KINDS
        assert str(decision).strip()
        return
    assert isinstance(decision, Decision)


@fuzz(6, suppress_health_check=[HealthCheck.too_slow])  # each example runs the sandbox
@given(
    st.one_of(JSON, st.lists(st.one_of(st.integers(-2, 5), st.text(max_size=2)), max_size=4)).map(json.dumps)
)
def test_any_answer_of_keep_is_a_list_of_offered_ids_or_garbage(answer):
    source = f"def keep(values):\n    return {json.loads(answer)!r}\n"
    kept = outcome(lambda: run_hook(SANDBOX, source, "keep", {"1": 0.5, "2": -0.1}), ContractError)
    if isinstance(kept, ContractError):
        assert kept.kind in {"garbage", "raised", "syntax"}, str(kept)
        return
    assert isinstance(kept, list)
    assert set(kept) <= {1, 2}
    assert len(set(kept)) == len(kept)
