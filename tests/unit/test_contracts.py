"""Provider and consumer contracts: every shipped example, run for real in the sandbox, and the
validation of what `check` and `keep` return."""

from __future__ import annotations

import ast
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from sterling.enclave.contracts import (
    Conditions,
    Decision,
    check_provider,
    condition_violations,
    decision_from,
    example,
    examples,
    run_hook,
    set_constant,
)
from sterling.enclave.sandbox import Sandbox, check_source
from sterling.errors import ContractError, UsageError

HOSPITAL = Account.from_key("0x" + "11" * 32)
CONSUMER = Account.from_key("0x" + "22" * 32)
STRANGER = Account.from_key("0x" + "33" * 32)
REGISTRY = "0x" + "ab" * 20


class FakeHost:
    """A test double of the outside world: a registry of credential holders and EIP-191 recovery."""

    def __init__(self, holders: set[str] | None = None) -> None:
        self.holders = holders or set()
        self.calls: list[tuple[str, str, list[Any]]] = []

    def job(self) -> dict[str, Any]:
        return {"id": 1}

    def listing(self) -> dict[str, Any]:
        return {"id": 3}

    def chain_call(self, address: str, signature: str, args: list[Any]) -> Any:
        self.calls.append((address, signature, args))
        if address == REGISTRY and signature == "holds(address)(bool)":
            return args[0] in self.holders
        raise ValueError(f"no contract at {address}")

    def recover(self, message: str, signature: str) -> str:
        address: str = Account.recover_message(encode_defunct(text=message), signature=signature)
        return address


def credential(issuer: Any, consumer: str) -> str:
    text = "sterling:credential:" + consumer.lower()
    signature: str = issuer.sign_message(encode_defunct(text=text)).signature.to_0x_hex()
    return signature


def request(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "listing_id": 3,
        "consumer": CONSUMER.address,
        "epsilon": 1.5,
        "delta": 1e-5,
        "model_family": "logistic_regression",
        "purpose": "screening for diabetic retinopathy",
        "job_name": "retinopathy-lr",
        "noise_multiplier": 1.1,
        "steps": 500,
        "credentials": [],
        "chain_id": 31337,
        "marketplace": "0x" + "cd" * 20,
    }
    return {**base, **changes}


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox()


@pytest.fixture(scope="module")
def hospital_contract() -> str:
    return set_constant(example("hospital_credential"), "HOSPITAL", HOSPITAL.address)


# --- the examples ----------------------------------------------------------------------------------


def test_every_example_is_shipped_and_passes_the_static_checks() -> None:
    assert examples() == [
        "consumer_drop_harmful",
        "credential_registry",
        "hospital_credential",
        "logreg_only",
        "no_advertising",
    ]
    for name in examples():
        source = example(name)
        assert ast.get_docstring(check_source(source)), f"{name} must say what it enforces at the top"


def test_hospital_credential_accepts_with_an_epsilon_cap(sandbox: Sandbox, hospital_contract: str) -> None:
    req = request(credentials=[credential(HOSPITAL, CONSUMER.address)])
    decision = check_provider(sandbox, hospital_contract, req, host=FakeHost())
    assert decision == Decision(accept=True, conditions=Conditions(max_epsilon=2.0))
    assert condition_violations(decision.conditions, epsilon=1.5, model_family="mlp") == []
    [problem] = condition_violations(decision.conditions, epsilon=3.0, model_family="mlp")
    assert problem == "max_epsilon: the job asks for ε = 3; the provider allows at most 2"


@pytest.mark.parametrize(
    "credentials",
    [
        [],
        [credential(STRANGER, CONSUMER.address)],  # signed by someone else
        [credential(HOSPITAL, STRANGER.address)],  # issued to another consumer
        ["0x1234"],  # not a signature at all
    ],
)
def test_hospital_credential_refuses_without_a_valid_credential(
    sandbox: Sandbox, hospital_contract: str, credentials: list[str]
) -> None:
    decision = check_provider(sandbox, hospital_contract, request(credentials=credentials), host=FakeHost())
    assert not decision.accept
    assert HOSPITAL.address in decision.reason


def test_hospital_credential_finds_the_valid_one_among_others(
    sandbox: Sandbox, hospital_contract: str
) -> None:
    creds = ["0xzz", credential(STRANGER, CONSUMER.address), credential(HOSPITAL, CONSUMER.address)]
    assert check_provider(sandbox, hospital_contract, request(credentials=creds), host=FakeHost()).accept


def test_logreg_only(sandbox: Sandbox) -> None:
    source = example("logreg_only")
    decision = check_provider(sandbox, source, request(), host=FakeHost())
    assert decision == Decision(accept=True, conditions=Conditions(model_families=("logistic_regression",)))
    refused = check_provider(sandbox, source, request(model_family="cnn"), host=FakeHost())
    assert not refused.accept
    assert "not cnn" in refused.reason
    [problem] = condition_violations(decision.conditions, epsilon=1.0, model_family="mlp")
    assert problem == "model_families: the job trains mlp; the provider allows only logistic_regression"


@pytest.mark.parametrize(
    ("purpose", "accept"),
    [
        ("screening for diabetic retinopathy", True),
        ("Ad targeting for MARKETING teams", False),
        ("selling insights to advertisers", False),
        ("market research on clinics", True),
    ],
)
def test_no_advertising(sandbox: Sandbox, purpose: str, accept: bool) -> None:
    decision = check_provider(sandbox, example("no_advertising"), request(purpose=purpose), host=FakeHost())
    assert decision.accept is accept
    if not accept:
        assert "advertising" in decision.reason


def test_credential_registry_asks_the_chain(sandbox: Sandbox) -> None:
    source = set_constant(example("credential_registry"), "REGISTRY", REGISTRY)
    host = FakeHost(holders={CONSUMER.address})
    decision = check_provider(sandbox, source, request(), host=host)
    assert decision == Decision(accept=True, conditions=Conditions(max_epsilon=1.0))
    assert host.calls == [(REGISTRY, "holds(address)(bool)", [CONSUMER.address])]
    refused = check_provider(sandbox, source, request(consumer=STRANGER.address), host=host)
    assert not refused.accept
    assert REGISTRY in refused.reason


def test_credential_registry_with_the_placeholder_fails_clearly(sandbox: Sandbox) -> None:
    with pytest.raises(ContractError, match="no contract at") as info:
        check_provider(sandbox, example("credential_registry"), request(), host=FakeHost())
    assert info.value.kind == "raised"


def test_consumer_drop_harmful_keeps_non_negative_values(sandbox: Sandbox) -> None:
    values = {"1": 0.25, "2": -0.1, "3": 0.0, "4": -3.5}
    assert run_hook(sandbox, example("consumer_drop_harmful"), "keep", values) == [1, 3]


# --- hooks -------------------------------------------------------------------------------------------


def test_run_hook_is_none_without_source_or_hook(sandbox: Sandbox) -> None:
    assert run_hook(sandbox, None, "keep", {"1": 1.0}) is None
    assert run_hook(sandbox, example("no_advertising"), "keep", {"1": 1.0}) is None
    with pytest.raises(UsageError, match="no consumer hook"):
        run_hook(sandbox, example("consumer_drop_harmful"), "payout", {})


@pytest.mark.parametrize(
    ("returns", "fragment"),
    [
        ("'1'", "must return a list"),
        ("['1']", "str '1' is not a listing id"),
        ("[True]", "bool True is not a listing id"),
        ("[9]", "listing 9 was not among those appraised"),
        ("[1, 1]", "listing 1 appears twice"),
    ],
)
def test_keep_garbage(sandbox: Sandbox, returns: str, fragment: str) -> None:
    source = f"def keep(values):\n    return {returns}\n"
    with pytest.raises(ContractError, match=fragment) as info:
        run_hook(sandbox, source, "keep", {"1": 0.5, "2": 0.1})
    assert info.value.kind == "garbage"


# --- what check may return -----------------------------------------------------------------------------


def test_bare_booleans(sandbox: Sandbox) -> None:
    assert check_provider(
        sandbox, "def check(r):\n    return True\n", request(), host=FakeHost()
    ) == Decision(True)
    refused = check_provider(sandbox, "def check(r):\n    return False\n", request(), host=FakeHost())
    assert not refused.accept
    assert "gave no reason" in refused.reason


def test_a_reject_dict_without_a_reason_gets_a_default(sandbox: Sandbox) -> None:
    decision = check_provider(
        sandbox, "def check(r):\n    return {'accept': False}\n", request(), host=FakeHost()
    )
    assert decision == Decision(
        accept=False, reason="the provider's contract refused the request (it gave no reason)"
    )


@pytest.mark.parametrize(
    ("returns", "fragment"),
    [
        ("'yes'", "must return a bool or a dict, not str 'yes'"),
        ("1", "not int 1"),
        ("None", "not NoneType"),
        ("{'accept': True, 'why': 'x'}", "unknown key 'why'"),
        ("{'reason': 'x'}", "'accept' must be true or false"),
        ("{'accept': 1}", "'accept' must be true or false, not int 1"),
        ("{'accept': False, 'reason': 3}", "'reason' must be a string"),
        ("{'accept': True, 'conditions': []}", "'conditions' must be a dict"),
        ("{'accept': True, 'conditions': {'min_epsilon': 1}}", "unknown condition 'min_epsilon'"),
        ("{'accept': True, 'conditions': {'max_epsilon': -1}}", "'max_epsilon' must be a positive number"),
        ("{'accept': True, 'conditions': {'max_epsilon': '2'}}", "'max_epsilon' must be a positive number"),
        ("{'accept': True, 'conditions': {'model_families': 'mlp'}}", "must be a list of strings"),
        ("{'accept': True, 'conditions': {'model_families': ['svm']}}", "unknown model family 'svm'"),
        ("{'accept': False, 'conditions': {'max_epsilon': 1}}", "a rejection cannot carry conditions"),
    ],
)
def test_check_garbage(sandbox: Sandbox, returns: str, fragment: str) -> None:
    source = f"def check(request):\n    return {returns}\n"
    with pytest.raises(ContractError, match=fragment) as info:
        check_provider(sandbox, source, request(), host=FakeHost())
    assert info.value.kind == "garbage"


@pytest.mark.parametrize("returns", ["{1, 2}", "object()", "b'x' + 1"])
def test_check_returning_non_json_or_crashing(sandbox: Sandbox, returns: str) -> None:
    with pytest.raises(ContractError) as info:
        check_provider(sandbox, f"def check(r):\n    return {returns}\n", request(), host=FakeHost())
    assert info.value.kind in {"garbage", "raised"}


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ContractError) as info:
        decision_from(
            {"accept": "yes", "extra": 1, "conditions": {"max_epsilon": 0, "model_families": ["svm"]}}
        )
    message = str(info.value)
    for fragment in ("unknown key 'extra'", "'accept'", "'max_epsilon'", "'svm'"):
        assert fragment in message


def test_conditions_are_normalized() -> None:
    decision = decision_from(
        {"accept": True, "reason": "ok", "conditions": {"max_epsilon": 2, "model_families": ["mlp", "cnn"]}}
    )
    assert decision == Decision(True, "ok", Conditions(max_epsilon=2.0, model_families=("mlp", "cnn")))
    both = condition_violations(decision.conditions, epsilon=2.5, model_family="logistic_regression")
    assert len(both) == 2


def test_set_constant() -> None:
    source = 'A = "0x0"  # placeholder\nB = 2\ndef check(r):\n    return A\n'
    assert set_constant(source, "A", "0xabc").splitlines()[0] == "A = '0xabc'"
    assert set_constant(source, "B", 3).splitlines()[1] == "B = 3"
    with pytest.raises(UsageError):
        set_constant(source, "C", 1)
