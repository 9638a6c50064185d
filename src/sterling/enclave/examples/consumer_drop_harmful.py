# mypy: ignore-errors
"""Keep only providers whose appraised value is at least zero: drop data that hurt the model.

A consumer contract (MicroPython, run in the enclave's sandbox). After appraisal the enclave
calls keep(values) with {"<listing id>": value, ...}; the listings returned are kept.
"""


def keep(values):
    return [int(listing_id) for listing_id, value in values.items() if value >= 0]
