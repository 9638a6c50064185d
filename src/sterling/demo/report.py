"""The demo's report: plots (PNG) and one HTML page that shows them, from the demo's summary.

Everything is drawn from the summary `sterling demo --format json` prints,
so the report shows exactly what the run measured. The page loads nothing
from the internet: the images sit beside it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from sterling.files import atomic_write

ETH = 10**18


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    atomic_write(path, buf.getvalue())
    return path.name


def plot_training(summary: dict[str, Any], path: Path) -> str:
    plt = _figure()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for job in summary["jobs"]:
        if job["progress"]:
            steps, eps = zip(*job["progress"], strict=True)
            left.plot(steps, eps, marker=".", label=job["label"])
        if job["twin_curve"]:
            epochs = [c["epoch"] for c in job["twin_curve"]]
            right.plot(
                epochs,
                [c["test_accuracy"] for c in job["twin_curve"]],
                label=f"{job['label']}: non-private twin",
            )
            if job.get("dp_curve"):
                right.plot(
                    [c["epoch"] for c in job["dp_curve"]],
                    [c["validation_accuracy"] for c in job["dp_curve"]],
                    linestyle=":",
                    marker=".",
                    color=right.lines[-1].get_color(),
                    label=f"{job['label']}: DP model (validation, each epoch)",
                )
            if job["accuracy"] is not None:
                right.axhline(
                    job["accuracy"],
                    linestyle="--",
                    color=right.lines[-1].get_color(),
                    label=f"{job['label']}: DP model",
                )
    left.set(title="privacy spent while training (from the enclave's heartbeats)", xlabel="step", ylabel="ε")
    right.set(title="accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_epsilon(summary: dict[str, Any], path: Path) -> str:
    plt = _figure()
    ps = summary["providers"]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    names = [p["name"] for p in ps]
    spent = [p["epsilon_spent"] for p in ps]
    left = [p["epsilon_left"] for p in ps]
    ax.barh(names, spent, color="#c0392b", label="ε spent")
    ax.barh(names, left, left=spent, color="#bbbbbb", label="ε left")
    ax.set(title="privacy budget per provider", xlabel="ε")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_values(summary: dict[str, Any], path: Path) -> str:
    plt = _figure()
    ps = [p for p in summary["providers"] if p["value"] is not None]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    colors = ["#c0392b" if p["flagged"] else "#2e86c1" for p in ps]
    ax.barh([p["name"] for p in ps], [p["value"] for p in ps], color=colors)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(
        title="appraised value (influence on the researcher's validation loss; red: flagged)", xlabel="value"
    )
    ax.invert_yaxis()
    return _save(fig, path)


def plot_payouts(summary: dict[str, Any], path: Path) -> str:
    plt = _figure()
    ps = summary["providers"]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    ax.barh([p["name"] for p in ps], [p["paid_wei"] / ETH for p in ps], color="#27ae60")
    ax.set(title="paid to each provider in this run (ETH)", xlabel="ETH")
    ax.invert_yaxis()
    return _save(fig, path)


def write_report(summary: dict[str, Any], out: Path) -> Path:
    """Write the plots and `report.html` into `out`; returns the page's path."""
    out.mkdir(parents=True, exist_ok=True)
    images = [
        plot_training(summary, out / "training.png"),
        plot_epsilon(summary, out / "epsilon.png"),
        plot_values(summary, out / "appraisal.png"),
        plot_payouts(summary, out / "payouts.png"),
    ]
    atomic_write(out / "summary.json", json.dumps(summary, indent=1).encode())
    e = html.escape

    def num(v: float | None, spec: str = ".3f") -> str:
        return "-" if v is None else format(v, spec)

    rows = "".join(
        f"<tr><td>{p['id']}</td><td>{e(p['name'])}</td><td>{p['rows']}</td><td>{p['epsilon_spent']:.2f}</td>"
        f"<td>{p['epsilon_left']:.2f}</td><td>{num(p['value'], '+.2f')}"
        f"{' (flagged)' if p['flagged'] else ''}</td><td>{p['paid_wei'] / ETH:.4f}</td></tr>"
        for p in summary["providers"]
    )

    jobs = "".join(
        f"<tr><td>{j['id']}</td><td>{e(j['label'])}</td><td>{e(j['state'])}</td><td>{j['epsilon']:g}</td>"
        f"<td>{num(j['accuracy'])}</td><td>{num(j['auc'])}</td><td>{num(j['nonprivate_accuracy'])}</td>"
        f"<td>{num(j['nonprivate_auc'])}</td></tr>"
        for j in summary["jobs"]
    )
    figures = "".join(f'<p><img src="{e(name)}" alt="{e(name)}"></p>' for name in images)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sterling demo report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:right}}td:nth-child(2){{text-align:left}}
.sim{{background:#fff3cd;border:1px solid #e0b000;padding:.5em}}</style></head><body>
<h1>Sterling: diabetic retinopathy, trained on data nobody showed anyone</h1>
<p class="sim"><b>SIMULATION</b>: the enclave here runs without TEE hardware and attests nothing.</p>
<p>Data: {e(summary["data"]["source"])}, {summary["data"]["pool_rows"]} photographs among the
providers. Chain {summary["chain"]["chain_id"]}, Marketplace {e(summary["chain"]["marketplace"])};
{summary["seconds"]:.1f} s.</p>
<h2>Providers</h2><table><tr><th>id</th><th>provider</th><th>rows</th><th>ε spent</th><th>ε left</th>
<th>value</th><th>paid ETH</th></tr>{rows}</table>
<h2>Jobs</h2><table><tr><th>job</th><th>model</th><th>state</th><th>ε per run</th><th>accuracy</th>
<th>AUC</th><th>non-private accuracy</th><th>non-private AUC</th></tr>{jobs}</table>
<p>Refused: {e(summary["refused_job_reason"])} (the chain: {e(summary["refused_on_chain_reason"])})</p>
{figures}</body></html>
"""
    path = out / "report.html"
    atomic_write(path, page.encode())
    return path
