"""CLI arguments and the files they name (cli/*, typer), run in-process with typer's CliRunner.

Every command line ends in success, a click usage error (exit 2, with its message), or a
SterlingError, which `sterling`'s entry point prints as one line with the error's exit code;
never another exception (a traceback). A refused `data encrypt` or `data decrypt` writes nothing.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fuzzkit import LISTINGS, ODD_TEXT, fuzz, mutated, tree
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st
from typer.testing import CliRunner

import sterling.sdk.consumer  # noqa: F401  (imports py_ecc, which raises the recursion limit, up front)
from sterling.cli.app import app
from sterling.errors import SterlingError

RUNNER = CliRunner()


@contextmanager
def home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sterling-fuzz-cli-") as tmp:
        yield Path(tmp)


def run(args: list[str], root: Path) -> Any:
    """Run `sterling ARGS` as its entry point would, and check the outcome is one of the three."""
    result = RUNNER.invoke(app, args, env={"STERLING_HOME": str(root), "STERLING_PASSPHRASE": "fuzz pass"})
    exc = result.exception
    if isinstance(exc, SterlingError):
        message = str(exc)
        assert message.strip(), type(exc).__name__
        assert "\n" not in message.strip(), message
        assert exc.exit_code > 0
    elif exc is not None and not isinstance(exc, SystemExit):
        raise AssertionError(f"sterling {args!r} raised {type(exc).__name__}: {exc}") from exc
    elif result.exit_code == 2:
        assert "Error" in result.output or "Usage" in result.output, result.output
    return result


NUMBERS = st.one_of(
    st.sampled_from(
        ["nan", "inf", "-inf", "-1", "0", "1e-300", "1e300", "1e999", "abc", "", "1,5", "0x10", "２"]
    ),
    st.sampled_from(["1.0", "0.01", "1e-5", "100", "2"]),
    st.integers(-(2**70), 2**70).map(str),
)
PRIVACY = [
    [
        "privacy",
        "epsilon",
        "--noise-multiplier",
        "1.0",
        "--sample-rate",
        "0.01",
        "--steps",
        "100",
        "--delta",
        "1e-5",
    ],
    ["privacy", "calibrate", "--target-epsilon", "1.0", "--sample-rate", "0.01", "--steps", "100"],
    [
        "job",
        "template",
        "mlp",
        "--listing",
        "1",
        "--epsilon",
        "1.0",
        "--classes",
        "2",
        "--payment-cap-wei",
        "10",
    ],
]


@st.composite
def command_lines(draw: st.DrawFn, base: list[str]) -> list[str]:
    args = list(base)
    for _ in range(draw(st.integers(1, 2))):
        i = draw(st.integers(2, len(args) - 1))
        how = draw(st.sampled_from(["value", "value", "drop", "unknown", "text"]))
        if how == "value":
            args[i] = draw(NUMBERS)
        elif how == "drop":
            del args[i]
        elif how == "unknown":
            args.insert(i, draw(st.sampled_from(["--nope", "-x", "--", "--format", "--help"])))
        else:
            args[i] = draw(ODD_TEXT.filter(lambda t: "\ud800" not in t and "\x00" not in t))
    return args


@fuzz(30)
@given(st.sampled_from(PRIVACY).flatmap(command_lines), st.sampled_from([[], ["--format", "json"]]))
@example(["privacy", "epsilon", "--noise-multiplier", "0.001", "--sample-rate", "0.8", "--steps", "60"], [])
@example(["privacy", "calibrate", "--target-epsilon", "1e-9", "--sample-rate", "0.8", "--steps", "60"], [])
@example(
    ["privacy", "calibrate", "--target-epsilon", "1.0", "--sample-rate", "0.8", "--steps", "1000000"], []
)
def test_privacy_and_template_arguments(args, fmt):
    with home() as root:
        run([*args, *fmt], root)


JOB = {
    "listings": [{"listing_id": 1, "epsilon": 1.0}],
    "model": {"layers": [{"type": "flatten"}, {"type": "linear", "out": 2}]},
    "training": {"steps": 60, "expected_batch_size": 32, "noise_multiplier": 5.0},
    "evaluation": {"metrics": []},
    "payment_cap_wei": 10**18,
}


def _text(doc: Any) -> str:
    return doc if isinstance(doc, str) else json.dumps(doc)


@fuzz(40)
@given(
    st.one_of(mutated(JOB).map(lambda c: c[0]), st.just(JOB)),
    st.one_of(mutated(LISTINGS).map(lambda c: c[0]), st.just(LISTINGS)),
    st.sampled_from(["both", "job deep", "listings deep", "job missing", "not json"]),
)
@example(JOB, LISTINGS, "job deep")  # found by fuzzing: a deeply nested file crashed the CLI (segfault)
def test_job_verify_files(job, listings, how):
    with home() as root:
        job_file, listings_file = root / "job.json", root / "listings.json"
        job_file.write_text("[" * 70_000 + "]" * 70_000 if how == "job deep" else _text(job))
        listings_file.write_text("[" * 70_000 + "]" * 70_000 if how == "listings deep" else _text(listings))
        if how == "job missing":
            job_file.unlink()
        if how == "not json":
            job_file.write_bytes(b"\xff\xfe{")
        result = run(
            ["job", "verify", str(job_file), "--listings", str(listings_file), "--format", "json"], root
        )
        if result.exit_code == 0:
            assert json.loads(result.stdout.strip().splitlines()[-1])["ok"] is True
        if how == "job deep":
            assert isinstance(result.exception, SterlingError)
            assert "nests deeper" in str(result.exception)
        if how == "listings deep":
            assert isinstance(result.exception, SterlingError)


DATASETS = st.sampled_from(
    [
        b"label,f0\n0,1\n1,2\n",
        b"label,f0\n0,nan\n",
        b"",
        b"\x00\x01garbage",
        b"label\n1\n",
        b"f0,f1\n1,2\n",
        b"PK\x03\x04",
    ]
)


@fuzz(15, suppress_health_check=[HealthCheck.too_slow])  # a valid file is encrypted under scrypt
@given(DATASETS, st.sampled_from(["data.csv", "data.npz", "data.parquet", "data.txt", "folder", "gone.csv"]),
       st.sampled_from([[], ["--label-column", "f0"], ["--name", "../up"], ["--name", ""]]))  # fmt: skip
def test_data_inspect_and_encrypt_write_nothing_when_they_refuse(content, name, extra):
    with home() as root:
        src = root / "in" / name
        src.parent.mkdir()
        if name == "folder":
            (src / "c0").mkdir(parents=True)
            (src / "c0" / "0.png").write_bytes(content)
        elif name != "gone.csv":
            src.write_bytes(content)
        before = tree(root / "in")
        run(
            [
                "data",
                "inspect",
                str(src),
                *[a for a in extra if a != "--name" and not a.startswith(("..", ""))],
            ],
            root,
        )
        out = root / "out"
        result = run(["data", "encrypt", str(src), "--out", str(out), *extra], root)
        assert tree(root / "in") == before
        if result.exit_code != 0:
            assert not out.exists() or tree(out) == {}, tree(out)


@fuzz(15)
@given(
    st.binary(max_size=200),
    st.one_of(st.binary(max_size=100), st.just(b'{"crypto": {}}'), st.just(b"{" * 70_000)),
)
def test_data_decrypt_of_any_files_writes_nothing_when_it_refuses(sealed, key):
    with home() as root:
        (root / "d.sealed").write_bytes(b"STRLENC\x00" + sealed)
        (root / "d.key.json").write_bytes(key)
        result = run(
            [
                "data",
                "decrypt",
                str(root / "d.sealed"),
                "--key",
                str(root / "d.key.json"),
                "--out",
                str(root / "o.npz"),
            ],
            root,
        )
        assert result.exit_code != 0
        assert not (root / "o.npz").exists()
        assert sorted(p.name for p in root.iterdir()) == ["d.key.json", "d.sealed"]
