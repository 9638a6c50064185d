# mypy: ignore-errors
# ruff: noqa: F821
"""Requests carrying a credential signed by HOSPITAL get ε up to 2; others are refused.

A provider contract (MicroPython, run in the enclave's sandbox). HOSPITAL is a placeholder:
put the address of the hospital's signing key there. A credential is an EIP-191 signature by
that key over "sterling:credential:" followed by the consumer's address in lower case; the
consumer attaches it to the job. `recover` is the sandbox's host function.
"""

HOSPITAL = "0x0000000000000000000000000000000000000000"
MAX_EPSILON = 2


def check(request):
    message = "sterling:credential:" + request["consumer"].lower()
    for credential in request["credentials"]:
        try:
            signer = recover(message, credential)
        except RuntimeError:
            continue  # a malformed signature is simply not a credential
        if signer.lower() == HOSPITAL.lower():
            return {"accept": True, "conditions": {"max_epsilon": MAX_EPSILON}}
    return {"accept": False, "reason": "no credential signed by the hospital " + HOSPITAL}
