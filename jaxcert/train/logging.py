"""Metrics as JSON lines (one record per logged step) and loss / accuracy curves as a PNG.

Each record averages the metrics of the steps since the previous record. On resume the log is cut
back to the restored step, so the file of a killed-and-resumed run equals that of an uninterrupted one
(exactly so when the checkpoint interval is a multiple of the logging interval).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Plotted keys; ``*_at_mean`` are GLS metrics of the unperturbed net (``loss`` is then the population mean).
LOSS_KEYS = ("loss", "loss_at_mean", "clean_loss", "cert_loss", "adv_loss")
ACC_KEYS = ("clean_acc", "cert_acc", "adv_acc", "clean_acc_at_mean", "cert_acc_at_mean")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL log; a truncated last line (a run killed while writing) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return records


class MetricsLog:
    """Append-only JSONL writer; ``resume_step`` drops records logged after that step."""

    def __init__(self, path: str | Path, *, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")


def _plain(v: Any) -> Any:
    """JSON-friendly scalars (NaN/inf as strings, which ``json`` would otherwise write invalidly)."""
    if isinstance(v, float | int | str | bool) or v is None:
        return v if not (isinstance(v, float) and not math.isfinite(v)) else str(v)
    return _plain(float(v))


def plot_metrics(
    records: Iterable[dict[str, Any]],
    path: str | Path,
    title: str = "",
    schedule: dict[str, Any] | None = None,
) -> Path:
    """Save :func:`metrics_figure` as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = metrics_figure(records, title, schedule)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def metrics_figure(records: Iterable[dict[str, Any]], title: str = "", schedule: dict[str, Any] | None = None) -> Any:
    """Two panels against the step (matplotlib, Agg backend):

    - losses, with the recipe ``schedule`` (``{"step", "eps", "kappa"}`` arrays, optionally ``"beta"``) on a
      second axis: ε as a fraction of its final value, κ and β as they are (all in [0, 1]);
    - training accuracies, and the test accuracies (record keys ``test_*``) as markers at their step.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, keys, label in ((ax_loss, LOSS_KEYS, "loss"), (ax_acc, ACC_KEYS, "accuracy")):
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=f"train {key}" if ax is ax_acc else key)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    test_keys = sorted({k for r in records for k in r if k.startswith("test_") and k.endswith(("acc", "acc_all"))})
    test_keys += sorted({k for r in records for k in r if k.startswith("test_cert_acc/")})
    markers = "os^vD<>ph*"
    for i, key in enumerate(test_keys):
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
        if pts:
            ax_acc.scatter(*zip(*pts, strict=True), marker=markers[i % len(markers)], zorder=3, label=key)
    if schedule is not None and len(schedule.get("step", ())):
        ax_sched = ax_loss.twinx()
        eps = [float(v) for v in schedule["eps"]]
        eps_max = max(eps) if eps and max(eps) > 0 else 1.0
        ax_sched.plot(schedule["step"], [v / eps_max for v in eps], "k--", lw=1, label=f"ε / {eps_max:g}")
        ax_sched.plot(schedule["step"], schedule["kappa"], "k:", lw=1.5, label="κ (clean weight)")
        if "beta" in schedule:
            ax_sched.plot(schedule["step"], schedule["beta"], color="grey", ls="-.", lw=1, label="β (CROWN-IBP)")
        ax_sched.set_ylim(-0.05, 1.05)
        ax_sched.set_ylabel("schedule")
        ax_sched.legend(loc="center right", fontsize="small")
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right" if ax is ax_loss else "lower right", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
