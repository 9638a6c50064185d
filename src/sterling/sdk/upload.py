"""Publishing a dataset that arrives as one uploaded file (the web app's provider page).

A `.npz`, `.csv` or `.parquet` file is imported as `sterling data inspect` would; a `.zip`
holds one folder of images per class (optionally inside one top folder) and is unpacked into a
scratch folder first, refusing absolute paths, `..`, links, and more than `max_bytes` unpacked
(a zip bomb is stopped by the sizes in its directory, and again while unpacking).
"""

from __future__ import annotations

import stat
import tempfile
import zipfile
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from eth_account.signers.local import LocalAccount

from sterling.chain.marketplace import Marketplace
from sterling.data.dataset import Dataset, Schema
from sterling.data.loaders import load_dataset
from sterling.errors import DatasetError, SterlingError, UsageError
from sterling.sdk.provider import (
    ListingTerms,
    Published,
    choose_enclave,
    publish,
    read_contract,
    seal_dataset,
)
from sterling.sdk.trust import Trust
from sterling.storage.blobs import BlobStore

SUFFIXES = (".npz", ".csv", ".parquet", ".pq", ".zip")
#: Fewer rows than this make a validation curve and appraisal values mostly noise.
MIN_VALIDATION_ROWS = 10
MAX_ZIP_ENTRIES = 200_000


def import_file(path: Path, *, filename: str, label_column: str = "label", max_bytes: int) -> Dataset:
    """The dataset in the uploaded file at `path`, whose name as uploaded was `filename`."""
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix not in SUFFIXES:
        raise DatasetError(
            f"{filename}: unknown dataset format {suffix or '(no extension)'}; "
            "upload a .npz, .csv, .parquet, or a .zip of class folders of images"
        )
    if suffix == ".zip":
        return _import_zip(path, filename, max_bytes)
    named = path.with_name(f"upload{suffix}")
    path.rename(named)
    try:
        dataset = load_dataset(named, label_column=label_column, max_bytes=max_bytes)
    except DatasetError as exc:
        raise DatasetError(str(exc).replace(str(named), filename)) from None
    finally:
        named.rename(path)
    return dataset


def _import_zip(path: Path, filename: str, max_bytes: int) -> Dataset:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{filename}: not a readable zip file ({exc})") from None
    with archive, tempfile.TemporaryDirectory(prefix="sterling-upload-") as tmp:
        root = Path(tmp)
        entries = archive.infolist()
        if len(entries) > MAX_ZIP_ENTRIES:
            raise DatasetError(f"{filename}: {len(entries)} entries is more than {MAX_ZIP_ENTRIES}")
        if sum(e.file_size for e in entries) > max_bytes:
            raise DatasetError(f"{filename}: unpacks to more than the {max_bytes}-byte limit")
        written = 0
        for entry in entries:
            name = PurePosixPath(entry.filename)
            if name.is_absolute() or ".." in name.parts or "\\" in entry.filename:
                raise DatasetError(f"{filename}: entry {entry.filename!r} points outside the archive")
            if stat.S_ISLNK(entry.external_attr >> 16):
                raise DatasetError(f"{filename}: entry {entry.filename!r} is a link; links are refused")
            if name.parts and (name.parts[0] == "__MACOSX" or name.name.startswith(".")):
                continue
            target = root.joinpath(*name.parts)
            if entry.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(entry) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise DatasetError(f"{filename}: unpacks to more than the {max_bytes}-byte limit")
                        out.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise DatasetError(f"{filename}: entry {entry.filename!r} is corrupt ({exc})") from None
        top = _class_root(root)
        try:
            return load_dataset(top, max_bytes=max_bytes)
        except DatasetError as exc:
            raise DatasetError(str(exc).replace(str(root), filename)) from None


def _class_root(root: Path) -> Path:
    """The folder holding the class folders: the root, or its only folder if that is all it holds."""
    children = [p for p in root.iterdir() if not p.name.startswith(".")]
    if len(children) == 1 and children[0].is_dir():
        inner = [p for p in children[0].iterdir() if not p.name.startswith(".")]
        if inner and all(p.is_dir() for p in inner):
            return children[0]
    return root


class FieldError(UsageError):
    """Bad input for one named field of a publish request (the web form's field names)."""

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(message)


#: ListingTerms.to_chain names each problem by its term first; the field each one belongs to.
TERM_FIELDS = (
    ("price per job", "price_per_job_wei"),
    ("price per ε", "price_per_epsilon_wei"),
    ("epsilon budget", "epsilon_budget"),
    ("max epsilon per job", "max_epsilon_per_job"),
    ("delta", "delta"),
)


def _terms_field(message: str) -> str:
    first = message.removeprefix("invalid terms: ").split("; ")[0]
    return next((name for words, name in TERM_FIELDS if first.startswith(words)), "terms")


@dataclass(frozen=True)
class Upload:
    """A dataset file as uploaded, with everything its listing needs."""

    path: Path
    filename: str
    terms: ListingTerms
    name: str = ""
    description: str = ""
    allowed_families: tuple[str, ...] = ()
    contract: str | None = None
    publish_preview: bool = False
    publish_class_counts: bool = False
    label_column: str = "label"


def publish_upload(
    market: Marketplace,
    provider: LocalAccount,
    store: BlobStore,
    upload: Upload,
    *,
    trust: Trust,
    max_bytes: int,
    lock: AbstractContextManager[Any] | None = None,
) -> tuple[Published, Dataset]:
    """Validate everything (terms, families, contract, the whole import), then seal, store and publish.

    Raises FieldError naming the field at fault before anything is stored. The data key is sealed
    only to an enclave `trust` admits (`sterling.sdk.trust.choose_enclave`). `lock` is held around
    the part that writes (storing blobs and the one publishing transaction).
    """
    from sterling.privacy.graph import FAMILIES
    from sterling.sdk.contracts import contract_problems
    from sterling.sdk.preview import render

    try:
        upload.terms.to_chain()
    except UsageError as exc:
        raise FieldError(str(exc), field=_terms_field(str(exc))) from None
    bad = [f for f in upload.allowed_families if f not in FAMILIES]
    if bad:
        raise FieldError(
            f"allowed_families: unknown {', '.join(bad)}; choose from {', '.join(FAMILIES)}",
            field="allowed_families",
        )
    if upload.contract is not None:
        try:
            read_contract(upload.contract)
        except UsageError as exc:
            raise FieldError(str(exc), field="contract") from None
        problems = contract_problems(upload.contract)
        if problems:
            raise FieldError("the provider contract is refused: " + "; ".join(problems), field="contract")
    try:
        dataset = import_file(
            upload.path, filename=upload.filename, label_column=upload.label_column, max_bytes=max_bytes
        )
    except SterlingError as exc:
        raise FieldError(str(exc), field="file") from None
    preview = render(dataset) if upload.publish_preview else None
    with lock if lock is not None else nullcontext():
        chain_terms, _, _ = upload.terms.to_chain()
        enclave = choose_enclave(market, trust=trust, pins=[chain_terms.pinned_measurement])
        sealed = seal_dataset(
            dataset,
            store,
            name=upload.name or PurePosixPath(upload.filename).stem,
            description=upload.description,
            contract_source=upload.contract,
            allowed_families=upload.allowed_families or None,
            preview_png=preview,
            publish_class_counts=upload.publish_class_counts,
        )
        return publish(market, provider, sealed, upload.terms, enclave=enclave), dataset


def schema_mismatch(validation: Schema, listing: Schema, *, listing_id: int) -> str | None:
    """Why a validation set cannot score a model trained on `listing`'s schema (None when it can).

    The enclave checks the same (shape and classes, in order: a label is an index into them)."""
    if validation.modality != listing.modality or validation.shape != listing.shape:
        return (
            f"the validation set holds {validation.modality} {list(validation.shape)}, unlike listing "
            f"{listing_id} ({listing.modality} {list(listing.shape)})"
        )
    if validation.classes != listing.classes:
        return (
            f"the validation set has classes {list(validation.classes)}, unlike listing {listing_id}'s "
            f"{list(listing.classes)}: it needs every class, named alike"
        )
    return None


def store_validation_upload(
    store: BlobStore,
    path: Path,
    *,
    filename: str,
    listings: dict[int, Schema],
    label_column: str = "label",
    max_bytes: int,
) -> tuple[str, Dataset]:
    """Import the consumer's uploaded validation set, check it fits every chosen listing's schema,
    and store it (`sdk.consumer.upload_validation_set`); FieldError naming the field before anything
    is stored. Returns its URI and the dataset."""
    from sterling.sdk.consumer import upload_validation_set

    if not listings:
        raise FieldError("choose the listings the validation set is for", field="listing_ids")
    try:
        dataset = import_file(path, filename=filename, label_column=label_column, max_bytes=max_bytes)
    except SterlingError as exc:
        raise FieldError(str(exc), field="file") from None
    for lid, schema in listings.items():
        problem = schema_mismatch(dataset.schema, schema, listing_id=lid)
        if problem is not None:
            raise FieldError(f"{filename}: {problem}", field="file")
    if dataset.schema.rows < MIN_VALIDATION_ROWS:
        raise FieldError(
            f"{filename}: {dataset.schema.rows} rows is too few for a validation set "
            f"(at least {MIN_VALIDATION_ROWS})",
            field="file",
        )
    return upload_validation_set(store, dataset), dataset
