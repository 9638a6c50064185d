"""The retinopathy demo, cold: demo time, and what privacy costs against the non-private twin.

Run: `sterling bench demo --format json`.

Each run is `sterling demo --fresh --format json` in a fresh process and a fresh state folder
(anvil on loopback, a SIMULATED enclave worker), exactly what `make demo` runs after set-up:

- `seconds`: the demo's own time (chain start to the last settlement), goal under 90 s on a
  2-core machine; `wall_seconds` adds the process's start and imports;
- per job: DP test accuracy and AUC beside the non-private twin trained on the same data, and
  the gap in accuracy points (goal for the DP CNN at ε = 3 on synthetic data: within 10);
- whether appraisal flagged the noise seller.

With RetinaMNIST at `../shared/data/retinamnist.npz` (or `$STERLING_RETINAMNIST`) a second
run uses the real photographs; the MedMNIST ResNet-18 anchor there is ACC 0.524, AUC 0.717.
`--quick` runs a smaller market (1,200 synthetic images, four honest providers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from sterling.config import PROJECT_ROOT

ANCHOR = {"accuracy": 0.524, "auc": 0.717}  # MedMNIST v2, ResNet-18 (28), RetinaMNIST test split


def _retinamnist() -> Path | None:
    env = os.environ.get("STERLING_RETINAMNIST")
    path = Path(env) if env else PROJECT_ROOT.parent / "shared" / "data" / "retinamnist.npz"
    return path if path.is_file() else None


def _demo(args: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sterling-bench-demo-") as tmp:
        state = str(Path(tmp) / "market")
        cmd = [sys.executable, "-m", "sterling.cli", "demo", "--fresh", "--state", state, "--format", "json"]
        env = {**os.environ, "STERLING_HOME": str(Path(tmp) / "home")}
        started = time.perf_counter()
        done = subprocess.run(
            [*cmd, *args], capture_output=True, text=True, timeout=900, check=False, cwd=PROJECT_ROOT, env=env
        )
        wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"the demo failed (exit {done.returncode}): {' | '.join(tail)}")
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    jobs = {}
    for job in summary["jobs"]:
        acc, twin = job.get("accuracy"), job.get("nonprivate_accuracy")
        jobs[job["model"]] = {
            "state": job["state"],
            "epsilon": job["epsilon"],
            "accuracy": acc,
            "auc": job.get("auc"),
            "nonprivate_accuracy": twin,
            "nonprivate_auc": job.get("nonprivate_auc"),
            "gap_points": None if acc is None or twin is None else round(100 * (twin - acc), 1),
        }
    noise = [p for p in summary["providers"] if p.get("kind") == "noise"]
    return {
        "seconds": summary["seconds"],
        "wall_seconds": round(wall, 1),
        "jobs": jobs,
        "noise_flagged": bool(noise) and all(p["flagged"] for p in noise),
        "refused_job_reason": summary.get("refused_job_reason"),
    }


def run(quick: bool = False) -> dict[str, Any]:
    args = ["--images", "1200", "--providers", "4"] if quick else []
    result: dict[str, Any] = {"synthetic": _demo(args)}
    cnn = result["synthetic"]["jobs"].get("cnn", {})
    result["goals"] = {
        "seconds_under_90": result["synthetic"]["seconds"] < 90,
        "cnn_gap_within_10_points": cnn.get("gap_points") is not None and cnn["gap_points"] <= 10,
        "noise_flagged": result["synthetic"]["noise_flagged"],
    }
    data = _retinamnist()
    if data is not None and not quick:
        real = _demo(["--data", str(data)])
        result["retinamnist"] = real
        twin = real["jobs"].get("cnn", {})
        result["goals"]["retinamnist_nonprivate_reaches_anchor"] = bool(
            twin.get("nonprivate_accuracy") is not None
            and twin["nonprivate_accuracy"] >= ANCHOR["accuracy"]
            and twin["nonprivate_auc"] >= ANCHOR["auc"]
        )
    else:
        result["retinamnist"] = None
    return result


def table(result: dict[str, Any]) -> Table:
    t = Table(title="sterling demo, cold (SIMULATED enclave)")
    for col in ("data", "model", "DP acc", "DP AUC", "twin acc", "twin AUC", "gap (points)", "demo s"):
        t.add_column(col, justify="left" if col in ("data", "model") else "right")
    for source in ("synthetic", "retinamnist"):
        run_ = result.get(source)
        if not run_:
            continue
        for model, j in run_["jobs"].items():
            t.add_row(
                source,
                model,
                *(
                    "—" if j.get(k) is None else f"{j[k]:.3f}"
                    for k in ("accuracy", "auc", "nonprivate_accuracy", "nonprivate_auc")
                ),
                "—" if j["gap_points"] is None else f"{j['gap_points']:.1f}",
                f"{run_['seconds']:.1f}",
            )
    t.caption = "goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in result["goals"].items())
    return t
