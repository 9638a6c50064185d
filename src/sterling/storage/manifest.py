"""A listing's public manifest: the schema, where the ciphertext is, and the provider's contract.

The listing's `data_uri` on chain points at this small JSON document, stored
content-addressed like every blob, so its URI ends in its own sha256 and it
is checked before it is read. The enclave reads it too, so it lives here, in
code the enclave's measurement covers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sterling.data.dataset import Schema
from sterling.errors import DatasetError, IntegrityError
from sterling.jsontext import MAX_DEPTH, too_deep
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
        raw = fetch_verified(data_uri, digest)
    except (ValueError, ImportError) as exc:  # fsspec: an unknown protocol, or its package missing
        raise IntegrityError(f"manifest URI {data_uri} cannot be read: {exc}") from None
    if too_deep(raw) is not None:
        raise IntegrityError(f"{data_uri} nests deeper than {MAX_DEPTH} levels: not a listing manifest")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(f"{data_uri} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise IntegrityError(f"{data_uri} is not a Sterling listing manifest")
    problems = _problems(doc)
    if problems:
        raise IntegrityError(f"{data_uri} is not a valid listing manifest: " + "; ".join(problems))
    return doc


def _problems(doc: dict[str, Any]) -> list[str]:
    """What is malformed in the fields readers use: a provider's own client may publish anything,
    and one broken manifest failed the whole market page (found by fuzzing)."""
    problems = []
    try:
        Schema.from_json(doc.get("schema"))
    except DatasetError as exc:
        problems.append(f"schema: {exc}")
    problems += [f"{key} must be text" for key in ("name", "description") if not _is(doc.get(key), str)]
    terms = doc.get("terms")
    if not _is(terms, dict):
        problems.append("terms must be an object")
    elif terms:
        families = terms.get("allowed_model_families")
        if families is not None and not (
            isinstance(families, list) and all(isinstance(f, str) for f in families)
        ):
            problems.append("terms.allowed_model_families must be a list of names")
        fee = terms.get("appraisal_fee_wei")
        if fee is not None and (isinstance(fee, bool) or not isinstance(fee, int) or fee < 0):
            problems.append("terms.appraisal_fee_wei must be a whole number of wei ≥ 0")
    for key in ("ciphertext", "contract", "preview"):
        ref = doc.get(key)
        if ref is not None and not (isinstance(ref, dict) and isinstance(ref.get("uri"), str)):
            problems.append(f"{key} must be an object with a uri")
    counts = doc.get("class_counts")
    if counts is not None and not (
        isinstance(counts, dict) and all(type(n) is int and n >= 0 for n in counts.values())
    ):
        problems.append("class_counts must map class names to counts")
    return problems


def _is(value: Any, kind: type) -> bool:
    return value is None or isinstance(value, kind)


@dataclass(frozen=True)
class BlobRef:
    """A blob a manifest points at: its URI and, where given, its sha256 (0x-hex)."""

    uri: str
    sha256: str | None = None

    @classmethod
    def from_json(cls, doc: Any) -> BlobRef | None:
        if doc is None:
            return None
        sha = doc.get("sha256")
        return cls(str(doc["uri"]), None if sha is None else str(sha))


@dataclass(frozen=True)
class ManifestTerms:
    """The terms a manifest adds to the chain's: which model families, and the appraisal fee."""

    allowed_model_families: tuple[str, ...] | None = None
    appraisal_fee_wei: int = 0


@dataclass(frozen=True)
class Manifest:
    """A listing's public manifest, validated and typed: what the enclave and the verifier read."""

    schema: Schema
    name: str = ""
    description: str = ""
    terms: ManifestTerms = ManifestTerms()
    ciphertext: BlobRef | None = None
    contract: BlobRef | None = None
    preview: BlobRef | None = None
    class_counts: dict[str, int] | None = field(default=None, hash=False)
    #: The document as published (for pages that show it).
    doc: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Manifest:
        """A manifest from its JSON document; IntegrityError naming every malformed field."""
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise IntegrityError("not a Sterling listing manifest")
        problems = _problems(doc)
        if problems:
            raise IntegrityError("not a valid listing manifest: " + "; ".join(problems))
        terms = doc.get("terms") or {}
        families = terms.get("allowed_model_families")
        return cls(
            schema=Schema.from_json(doc["schema"]),
            name=str(doc.get("name") or ""),
            description=str(doc.get("description") or ""),
            terms=ManifestTerms(
                allowed_model_families=tuple(families) if families else None,
                appraisal_fee_wei=int(terms.get("appraisal_fee_wei") or 0),
            ),
            ciphertext=BlobRef.from_json(doc.get("ciphertext")),
            contract=BlobRef.from_json(doc.get("contract")),
            preview=BlobRef.from_json(doc.get("preview")),
            class_counts=dict(doc["class_counts"]) if doc.get("class_counts") is not None else None,
            doc=doc,
        )


def load_manifest(data_uri: str) -> Manifest:
    """`read_manifest`, typed."""
    return Manifest.from_json(read_manifest(data_uri))
