# mypy: ignore-errors
"""No model family but logistic regression may be trained on this data.

A provider contract (MicroPython, run in the enclave's sandbox). It refuses other families
outright, and attaches the condition so the verifier checks the job's real graph too.
"""

ALLOWED = "logistic_regression"


def check(request):
    family = request["model_family"]
    if family != ALLOWED:
        return {
            "accept": False,
            "reason": "only logistic regression may be trained on this data, not " + family,
        }
    return {"accept": True, "conditions": {"model_families": [ALLOWED]}}
