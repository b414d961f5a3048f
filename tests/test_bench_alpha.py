"""experiments/bench_alpha.py: argument errors and the row comparison (the benchmark itself is not run here)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "experiments" / "bench_alpha.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_alpha", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--examples", "10", "--slice", "4"], "must be a multiple of --slice"),
        (["--variants", "shared,best"], "unknown variant"),
        (["--slice", "0"], "--slice must be >= 1"),
        (["--reference", "/nonexistent/venv"], "no such virtual environment"),
    ],
)
def test_bad_arguments_exit_with_one_line(bench, argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_compare_counts_rows_tighter_and_looser_than_the_base(bench):
    base = np.array([[0.0, 1.0], [2.0, 3.0]])
    lb = np.array([[0.5, 1.0], [1.0, 3.00001]])
    c = bench.compare(lb, base)
    assert c["frac_tighter"] == 0.25 and c["frac_looser"] == 0.25
    assert c["mean_gain"] == pytest.approx((0.5 - 1.0 + 0.00001) / 4)
    assert c["mean_lb"] == pytest.approx(lb.mean())
