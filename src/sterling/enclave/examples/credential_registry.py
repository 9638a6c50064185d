# mypy: ignore-errors
# ruff: noqa: F821
"""Consumers that hold a credential in the on-chain REGISTRY get ε up to 1; others are refused.

A provider contract (MicroPython, run in the enclave's sandbox). REGISTRY is a placeholder: put
the address of a contract with a view function `holds(address) returns (bool)` there (e.g. a
soulbound credential token). `chain_call` is the sandbox's host function for view calls.
"""

REGISTRY = "0x0000000000000000000000000000000000000000"
MAX_EPSILON = 1


def check(request):
    if chain_call(REGISTRY, "holds(address)(bool)", [request["consumer"]]) is True:
        return {"accept": True, "conditions": {"max_epsilon": MAX_EPSILON}}
    return {"accept": False, "reason": "the consumer holds no credential in the registry " + REGISTRY}
