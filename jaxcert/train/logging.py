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


def plot_metrics(records: Iterable[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Two panels, losses and accuracies against the step (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(records)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, keys, label in ((ax_loss, LOSS_KEYS, "loss"), (ax_acc, ACC_KEYS, "training accuracy")):
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=key)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
