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

from jaxcert.train.tensorboard import EventWriter

#: Plotted keys; ``*_at_mean`` are GLS metrics of the unperturbed net (``loss`` is then the population mean).
LOSS_KEYS = ("loss", "loss_at_mean", "clean_loss", "cert_loss", "adv_loss")
ACC_KEYS = ("clean_acc", "cert_acc", "adv_acc", "clean_acc_at_mean", "cert_acc_at_mean")
#: Validation accuracies (``val_size`` > 0), plotted as dashed curves with markers.
VAL_KEYS = ("val_clean_acc", "val_cert_acc")


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
    """Append-only JSONL writer; ``resume_step`` drops records logged after that step. With ``tensorboard``
    (a folder) every record is also written there as TensorBoard scalars (:mod:`jaxcert.train.tensorboard`)."""

    def __init__(self, path: str | Path, *, resume_step: int | None = None, tensorboard: str | Path | None = None):
        self.events = EventWriter(tensorboard) if tensorboard is not None else None
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
        if self.events is not None:
            self.events.write_record(record)


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
    """Two panels against the step, and a table (matplotlib, Agg backend):

    - losses, with the recipe ``schedule`` (``{"step", "eps", "kappa"}`` arrays, optionally ``"beta"``) on a
      second axis: ε as a fraction of its final value, κ and β as they are (all in [0, 1]);
    - training accuracies (and, as marked lines, test accuracies logged at several steps);
    - the test accuracies (record keys ``test_*``) as a table: their last value, in percent, and its step.

    Each panel's legend sits below it, outside the axes, so no legend covers a curve; the final test figures,
    all logged at the last step, are read off the table instead of overlapping markers.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    tests = _test_accuracies(records)
    fig = plt.figure(figsize=(14 if tests else 11, 5), layout="constrained")
    grid = fig.add_gridspec(1, 3 if tests else 2, width_ratios=(1, 1, 0.45) if tests else (1, 1))
    ax_loss, ax_acc = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    for ax, keys, label in ((ax_loss, LOSS_KEYS, "loss"), (ax_acc, ACC_KEYS, "accuracy")):
        for key in keys:
            pts = _points(records, key)
            if pts:
                ax.plot(*zip(*pts, strict=True), label=f"train {key}" if ax is ax_acc else key)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    for key in VAL_KEYS:  # the validation curve (val_size > 0), logged every val_every steps
        pts = _points(records, key)
        if pts:
            ax_acc.plot(*zip(*pts, strict=True), marker=".", ls="--", label=key)
    markers = "os^vD<>ph*"
    for i, (key, pts) in enumerate(tests.items()):
        if len(pts) > 1:  # a test curve; single final values are in the table
            ax_acc.plot(*zip(*pts, strict=True), marker=markers[i % len(markers)], ls=":", label=key)
    legend_axes = [ax_loss]
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
        legend_axes.append(ax_sched)
    _legend_below(ax_loss, legend_axes)
    _legend_below(ax_acc, [ax_acc])
    if tests:
        _test_table(fig.add_subplot(grid[2]), tests)
    if title:
        fig.suptitle(title)
    return fig


def _points(records: list[dict[str, Any]], key: str) -> list[tuple[Any, float]]:
    return [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]


def _test_accuracies(records: list[dict[str, Any]]) -> dict[str, list[tuple[Any, float]]]:
    """``{key: [(step, value), ...]}`` of the ``test_*acc``, ``test_*acc_all`` and ``test_cert_acc/<r>`` keys,
    in the order they first appear."""
    keys = dict.fromkeys(
        k for r in records for k in r if k.startswith("test_") and (k.endswith(("acc", "acc_all")) or "acc/" in k)
    )
    return {k: pts for k in keys if (pts := _points(records, k))}


def _legend_below(ax: Any, sources: list[Any]) -> None:
    """One legend of the lines of the axes ``sources``, centred below ``ax`` (outside the plot area)."""
    handles, labels = [], []
    for source in sources:
        h, lab = source.get_legend_handles_labels()
        handles += h
        labels += lab
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize="small",
                  frameon=False)  # fmt: skip


def _test_table(ax: Any, tests: dict[str, list[tuple[Any, float]]]) -> None:
    """The last value (percent) of each test accuracy as a table filling ``ax``; its step in the title (a
    column of steps if they differ)."""
    ax.axis("off")
    steps = {pts[-1][0] for pts in tests.values()}
    rows = [[key.removeprefix("test_"), f"{100 * pts[-1][1]:.1f}%"] for key, pts in tests.items()]
    labels = ["test", "accuracy"]
    if len(steps) > 1:
        rows = [[*row, str(pts[-1][0])] for row, pts in zip(rows, tests.values(), strict=True)]
        labels.append("step")
    table = ax.table(cellText=rows, colLabels=labels, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(10)
    table.auto_set_column_width(range(len(labels)))  # columns as wide as their longest entry
    table.scale(1, 1.5)
    for (row, _), cell in table.get_celld().items():
        cell.set_edgecolor("lightgrey")
        if row == 0:
            cell.set_text_props(weight="bold")
    ax.set_title("final evaluation" + (f" (step {steps.pop()})" if len(steps) == 1 else ""), fontsize="medium")
