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
        (["--lr-decay", "0"], "--lr-decay must be in (0, 1]"),
        (["--cases", "cnn3,cnn9"], "unknown case(s) cnn9"),
        (["--reference-saved", "/nonexistent.npz"], "no such file"),
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
    assert c["worst_gain"] == pytest.approx(-1.0)


def test_large_bounds_differ_only_beyond_a_relative_tolerance(bench):
    base = np.array([[-200.0, -200.0, 0.5, 0.5]])
    lb = np.array([[-200.01, -199.95, 0.5002, 0.4995]])
    c = bench.compare(lb, base)
    # 0.01 below a bound of size 200 is within 1e-4 · 200; 0.05 above it is not; small bounds: 1e-4 absolute
    assert c["frac_tighter"] == 0.5 and c["frac_looser"] == 0.25


def test_a_saved_reference_reads_back_and_must_match_the_rows(bench, tmp_path):
    path = tmp_path / "ref.npz"
    lb = np.arange(6.0).reshape(2, 3)
    bench.save_reference(path, {"lb": lb, "seconds": 4.0, "peak_rss_gib": 1.5})
    back = bench.saved_reference(path, (2, 3))
    np.testing.assert_array_equal(back["lb"], lb)
    assert back["throughput"] == 0.5 and back["peak_rss_gib"] == 1.5
    with pytest.raises(SystemExit, match="this run has"):
        bench.saved_reference(path, (4, 3))
