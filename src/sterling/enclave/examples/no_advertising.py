# mypy: ignore-errors
"""The purpose must not mention advertising or marketing.

A provider contract (MicroPython, run in the enclave's sandbox). The job's stated purpose is
matched case-insensitively against word stems, so "Advertisers", "ad targeting for
marketers" and "MARKETING" are all refused.
"""

BANNED = ("advertis", "marketing", "marketer")


def check(request):
    purpose = request["purpose"].lower()
    for stem in BANNED:
        if stem in purpose:
            return {
                "accept": False,
                "reason": "the purpose mentions " + stem + "...; this data is not for advertising",
            }
    return True
