"""A listing's public manifest: the schema, where the ciphertext is, and the provider's contract.

The listing's `data_uri` on chain points at this small JSON document, stored
content-addressed like every blob, so its URI ends in its own sha256 and it
is checked before it is read. The enclave reads it too, so it lives here, in
code the enclave's measurement covers.
"""

from __future__ import annotations

import json
from typing import Any

from sterling.errors import IntegrityError
from sterling.storage.blobs import fetch_verified

MANIFEST_FORMAT = "sterling.listing-manifest/1"


def read_manifest(data_uri: str) -> dict[str, Any]:
    """Fetch a listing's public manifest and check it against the hash its URI names."""
    tail = data_uri.rstrip("/").rsplit("/", 1)[-1]
    try:
        digest = bytes.fromhex(tail)
    except ValueError:
        raise IntegrityError(f"manifest URI does not end in its sha256: {data_uri}") from None
    if len(digest) != 32:
        raise IntegrityError(f"manifest URI does not end in its sha256: {data_uri}")
    try:
        doc = json.loads(fetch_verified(data_uri, digest))
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(f"{data_uri} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise IntegrityError(f"{data_uri} is not a Sterling listing manifest")
    return doc
