"""Multi-process training (jax.distributed, CPU processes on localhost with gloo collectives).

2 processes × 2 host devices train the same as 1 process × 4 devices and as 1 device (certified IBP with the
batch split over the 4 devices, RGS on a 2 × 2 batch × members mesh, PGPE with the population over the 4
devices); the final certification and ``python -m jaxcert.certify --distributed`` split over 2 processes give
one process's report; a 2-process run killed after a checkpoint resumes; a missing process or an unreachable
coordinator ends with a clear error within a bounded time. Every process is a subprocess with a timeout.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcert.certify import main as main_certify
from jaxcert.data import concentric_spheres
from jaxcert.evaluate import evaluate_per_example
from jaxcert.nets import get_architecture, init_params
from jaxcert.nets.network import split_trainable
from jaxcert.train.checkpoint import Checkpoints
from jaxcert.train.configs import get_config, override
from jaxcert.train.distributed import check_args, parse_address
from jaxcert.train.loop import setup
from jaxcert.workflow import train

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds for any group of processes (they normally take well under a minute)

#: method -> (config overrides, devices along the batch axis of the 4-device mesh)
RUNS = {
    "certified": ({"method": "certified"}, 4),  # batch over all devices (each process loads half of it)
    "rgs": ({"method": "rgs", "samples": 4, "sigma": 0.05}, 2),  # 2 × 2: batch across processes, samples within
    "pgpe": ({"method": "pgpe", "population": 8, "sigma": 0.05}, 1),  # the population across both processes
}

DRIVER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from jaxcert.train.configs import get_config, override
    from jaxcert.train.distributed import is_main_process, to_host
    from jaxcert.certify import certify_dataset
    from jaxcert.train.loop import load_data
    from jaxcert.workflow import train

    args = json.loads(sys.argv[1])
    results = {}
    for name, (changes, mesh_data) in args["runs"].items():
        mesh = {"mesh_data": mesh_data} if args["mesh"] else {}
        config = override(
            get_config("tiny"), steps=3, log_every=1, checkpoint_every=3, out=f"{args['out']}/{name}",
            devices=args["devices"], **changes, **mesh, **args["launch"],
        )
        evaluated = name == "certified"  # 4 test batches of 16: with 2 processes, 2 batches each
        config = override(config, eval_batch_size=16)
        result = train(config, progress=False, evaluate=evaluated)
        params = to_host(result["state"].params)
        results[name] = {
            "losses": [r["loss"] for r in result["metrics"]],
            "params": [np.asarray(p).ravel().tolist() for p in __import__("jax").tree_util.tree_leaves(params)],
        }
        if evaluated:  # the loop's (split) certification, and one process's certification of the same params
            results[name]["eval"] = result["eval"]
            results[name]["eval_here"] = certify_dataset(
                result["arch"], to_host(result["state"].full_params), load_data(config)[1], config.test_eps,
                relaxations=config.eval_cascade, pgd_steps=config.eval_pgd_steps,
                pgd_restarts=config.eval_pgd_restarts, apgd_steps=config.eval_apgd_steps, batch_size=16,
                limit=config.test_limit, seed=config.seed, progress=False,
            ).accuracies()
    if args["devices"] == 4:  # the meshes of 4 devices by data-axis size (a size-1 axis is dropped)
        from jaxcert.train.sharding import training_mesh

        meshes = {d: training_mesh(4, d) for d in (1, 2, 4)}
        results["meshes"] = {d: [list(m.axis_names), list(m.devices.shape)] for d, m in meshes.items()}
    if is_main_process():
        print("RESULT", json.dumps(results))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def env_with(devices: int) -> dict[str, str]:
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    return {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def launch(argv: list[str], devices: int, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *argv], cwd=ROOT, env=env_with(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, **kw,
    )  # fmt: skip


def finish(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> list[tuple[int, str, str]]:
    """Wait for every process (killing all of them on a timeout); ``(returncode, stdout, stderr)`` each."""
    deadline = time.monotonic() + timeout
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


def distributed_flags(port: int, i: int, n: int = 2, timeout: float = 60) -> dict:
    return {"distributed": True, "coordinator": f"localhost:{port}", "num_processes": n, "process_id": i,
            "distributed_timeout": timeout}  # fmt: skip


def result_of(stdout: str) -> dict:
    return json.loads(next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT ") :])


@pytest.fixture(scope="module")
def equivalent_runs(tmp_path_factory):
    """The three methods trained by 2 processes × 2 devices, 1 process × 4 devices and 1 device (all at once)."""
    root = tmp_path_factory.mktemp("distributed")
    port = free_port()

    def driver(tag: str, devices: int, mesh: bool, launch_flags: dict) -> list[str]:
        args = {"runs": RUNS, "out": str(root / tag), "devices": devices, "mesh": mesh, "launch": launch_flags}
        return ["-c", DRIVER, json.dumps(args)]

    procs = [launch(driver("two", 0, True, distributed_flags(port, i)), devices=2) for i in range(2)]
    procs.append(launch(driver("four", 4, True, {}), devices=4))
    procs.append(launch(driver("one", 1, False, {}), devices=1))
    done = finish(procs)
    for code, _, stderr in done:
        assert code == 0, stderr[-3000:]
    assert "RESULT" not in done[1][1], "only process 0 reports"
    return {"two": result_of(done[0][1]), "four": result_of(done[2][1]), "one": result_of(done[3][1]), "root": root}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(RUNS))
def test_two_processes_train_like_one_process_and_like_one_device(equivalent_runs, method):
    two, four, one = (equivalent_runs[k][method] for k in ("two", "four", "one"))
    assert len(two["losses"]) == 3
    for other in (four, one):
        np.testing.assert_allclose(two["losses"], other["losses"], rtol=1e-5, atol=1e-6)
        for a, b in zip(two["params"], other["params"], strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    initial, _ = split_trainable(setup(override(get_config("tiny"), **RUNS[method][0])).params)
    pairs = zip(jax.tree_util.tree_leaves(initial), two["params"], strict=True)
    moved = max(float(np.max(np.abs(np.ravel(p) - np.asarray(q)))) for p, q in pairs)
    assert moved > 1e-4  # the comparison is not vacuous: training changed the weights
    out = equivalent_runs["root"] / "two" / method
    assert (out / "metrics.jsonl").exists() and (out / "config.json").exists()  # written once, by process 0
    assert Checkpoints(out / "checkpoints", every=3).latest_step() == 3  # written by both processes together


@pytest.mark.slow
def test_evaluation_split_over_two_processes_equals_one_process_certification(equivalent_runs):
    two = equivalent_runs["two"]["certified"]
    cascade = get_config("tiny").eval_cascade  # the certify cascade: cert_acc/<r> cumulative
    accuracies = {"clean_acc", "pgd_acc", "robust_acc", "cert_acc", *(f"cert_acc/{r}" for r in cascade)}
    assert set(two["eval"]) == accuracies
    assert two["eval"] == two["eval_here"]
    assert 0.0 < two["eval"]["clean_acc"] < 1.0  # the counts are not trivially 0 or all
    for other in ("four", "one"):
        assert equivalent_runs[other]["certified"]["eval"] == equivalent_runs[other]["certified"]["eval_here"]
    written = {
        k: json.loads((equivalent_runs["root"] / k / "certified" / "results.json").read_text()) for k in ("two", "one")
    }
    assert set(written["two"]) == set(written["one"]) >= accuracies  # results.json: the keys of a 1-process run
    assert all(written["two"][k] == two["eval"][k] for k in accuracies)
    report = json.loads((equivalent_runs["root"] / "two" / "certified" / "certify.json").read_text())
    assert len(report["examples"]) == 64 and report["summary"]["cert_acc"] == two["eval"]["cert_acc"]


@pytest.mark.slow
@pytest.mark.parametrize("bab", [False, True], ids=["cascade", "with-bab"])
def test_certify_split_over_two_processes_writes_the_report_of_one_process(tiny_run, tmp_path, bab):
    # 4 attack batches of 16 and, for CROWN, chunks of 2 open examples: both processes get a share of each stage
    # (branch and bound: one example at a time, round robin)
    options = ["--eps", "0.1", "--relaxations", "ibp,crown-ibp,crown", "--batch-size", "16", "--pgd-steps", "5",
               "--apgd-steps", "10", "--no-progress"]  # fmt: skip
    if bab:
        # a domain budget, not the clock, ends each search: the same on one process and two
        options += ["--bab", "--bab-timeout", "300", "--bab-domains", "64", "--bab-batch", "8"]
    dirs = {k: tmp_path / k for k in ("one", "two")}
    for d in dirs.values():
        shutil.copytree(tiny_run[0], d)
        for report in d.glob("certify*"):  # the session's run may hold reports of other tests' certify calls
            report.unlink()
    port = free_port()
    two = [
        ["-m", "jaxcert.certify", str(dirs["two"]), *options, "--distributed", "--coordinator", f"localhost:{port}",
         "--num-processes", "2", "--process-id", str(i), "--distributed-timeout", "60"]
        for i in range(2)
    ]  # fmt: skip
    done = finish([launch(argv, devices=2) for argv in [*two, ["-m", "jaxcert.certify", str(dirs["one"]), *options]]])
    for code, _, stderr in done:
        assert code == 0, stderr[-3000:]
    assert "written:" in done[0][1] and "certif" not in done[1][1], "process 0 alone prints and writes the report"
    reports = [sorted(d.glob("certify-eps0.1-n*.json")) for d in (dirs["one"], dirs["two"])]
    assert [len(r) for r in reports] == [1, 1]  # beside the training-time certify.json, once
    one, split = (json.loads(r[0].read_text()) for r in reports)
    assert split["examples"] == one["examples"]  # per example: state, deciding method, certified margin bound
    del one["summary"]["seconds"], split["summary"]["seconds"]
    assert split["summary"] == one["summary"] and split["settings"] == one["settings"]
    # not vacuous: misclassified, attacked, certified by CROWN (8 chunks, 4 per process) and open examples,
    # which branch and bound then searched (on both processes' shares)
    settled = {e["by"] for e in one["examples"]}
    assert {"clean", "pgd", "crown"} <= settled and ("" in settled or bab)
    if bab:
        searched = [e for e in one["examples"] if e.get("bab_domains", 0) > 0]
        assert len(searched) >= 2, "branch and bound searched at least one example per process"
    assert main_certify([str(dirs["one"]), "--coordinator", f"localhost:{port}"]) == 2  # needs --distributed


@pytest.mark.slow
def test_the_mesh_is_batch_by_members_and_one_dimensional_when_one_axis_has_size_one(equivalent_runs):
    meshes = equivalent_runs["four"]["meshes"]
    assert meshes == {"1": [["samples"], [4]], "2": [["batch", "samples"], [2, 2]], "4": [["batch"], [4]]}


@pytest.mark.slow
def test_a_killed_two_process_run_resumes(tmp_path):
    steps, every = 60, 10
    config = override(get_config("tiny"), steps=steps, checkpoint_every=every, out=str(tmp_path / "reference"))
    cli = ["-m", "jaxcert.train", "--config", "tiny", "--steps", str(steps), "--checkpoint-every", str(every),
           "--no-progress", "--no-eval", "--out", str(tmp_path / "killed"), "--distributed", "--num-processes", "2",
           "--distributed-timeout", "60"]  # fmt: skip

    def pair(port: int, *extra: str) -> list[subprocess.Popen]:
        argv = [*cli, *extra, "--coordinator", f"localhost:{port}"]
        return [launch([*argv, "--process-id", str(i)], devices=2) for i in range(2)]

    procs = pair(free_port())
    try:
        for line in procs[0].stdout:
            if line.startswith("checkpoint saved at step"):
                break
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
        finish(procs, timeout=30)
    interrupted_at = Checkpoints(tmp_path / "killed" / "checkpoints", every=every).latest_step()
    assert interrupted_at is not None and interrupted_at < steps, "the run must be killed before it finished"

    (code0, out0, err0), (code1, out1, err1) = finish(pair(free_port(), "--resume"))
    assert code0 == 0 and code1 == 0, (err0[-2000:], err1[-2000:])
    assert f"resumed from step {interrupted_at}" in out0
    assert "resumed" not in out1  # progress and messages come from process 0 only

    reference = train(config, progress=False, evaluate=False)["state"]  # one device, uninterrupted
    parts = setup(config)
    final, _ = Checkpoints(tmp_path / "killed" / "checkpoints", every=every).restore(parts.trainer.init(parts.params))
    assert int(final.step) == steps  # a 4-device checkpoint restored on one device
    for a, b in zip(jax.tree_util.tree_leaves(final.params), jax.tree_util.tree_leaves(reference.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_a_missing_process_an_unreachable_coordinator_or_no_cluster_is_a_clear_error_in_bounded_time(tmp_path):
    join_timeout = 4
    base = ["-m", "jaxcert.train", "--config", "tiny", "--steps", "2", "--no-progress", "--no-eval", "--distributed",
            "--distributed-timeout", str(join_timeout)]  # fmt: skip
    # process 0 of 2 whose partner never starts; process 1 of 2 with no process 0 (nothing listens on the port)
    alone = [*base, "--out", str(tmp_path / "a"), "--coordinator", f"localhost:{free_port()}", "--num-processes",
             "2", "--process-id", "0"]  # fmt: skip
    nobody = [*base, "--out", str(tmp_path / "b"), "--coordinator", f"localhost:{free_port()}", "--num-processes",
              "2", "--process-id", "1"]  # fmt: skip
    undetected = [*base, "--out", str(tmp_path / "c")]  # auto-detection outside a TPU VM / SLURM / MPI job
    certify = ["-m", "jaxcert.certify", str(tmp_path / "d"), "--distributed", "--coordinator",
               f"localhost:{free_port()}", "--num-processes", "2", "--process-id", "1", "--distributed-timeout",
               str(join_timeout)]  # fmt: skip
    start = time.monotonic()
    results = finish([launch(alone, 1), launch(nobody, 1), launch(undetected, 1), launch(certify, 1)], timeout=120)
    (code_a, _, err_a), (code_b, _, err_b), (code_c, _, err_c), (code_d, _, err_d) = results
    assert time.monotonic() - start < 120
    assert code_a == 2 and "did not join within 4 s" in err_a, err_a[-2000:]
    assert "--num-processes" in err_a
    assert code_b == 2 and "cannot reach the coordinator at localhost:" in err_b, err_b[-2000:]
    assert "Traceback" not in err_b
    assert code_c == 2 and "pass --coordinator HOST:PORT --num-processes N --process-id I" in err_c, err_c[-2000:]
    assert code_d == 2 and "cannot reach the coordinator at localhost:" in err_d, err_d[-2000:]  # certify: the same


def test_each_process_evaluates_its_round_robin_share_of_the_test_batches():
    ds = concentric_spheres(64, 10, seed=1)
    arch = get_architecture("mlp_small", ds.num_classes, ds.normalization)
    params = init_params(arch, ds.in_shape, seed=0)
    run = lambda part: evaluate_per_example(arch, params, ds, 0.05, pgd_steps=2, batch_size=16, part=part)
    whole, first, second = run((0, 1)), run((0, 2)), run((1, 2))
    for k, v in whole.items():
        assert len(first[k]) == len(second[k]) == 32
        interleaved = np.concatenate([first[k][:16], second[k][:16], first[k][16:], second[k][16:]])
        np.testing.assert_array_equal(interleaved, v)
    assert all(len(v) == 0 for v in run((5, 8)).values())  # no batch left for this process
    with pytest.raises(ValueError, match="part"):
        run((2, 2))


@pytest.mark.slow
def test_importing_the_training_modules_leaves_jax_devices_unstarted():
    # jax.distributed.initialize must come before JAX starts its devices, and `python -m jaxcert.train` imports
    # these first: none of them may start the devices at import (evosax.algorithms does: import it lazily)
    check = (
        "import jaxcert.train, jaxcert.train.__main__, jaxcert.train.loop, jaxcert.evaluate\n"
        "from jax._src import xla_bridge\n"
        "assert not xla_bridge.backends_are_initialized(), 'an import started the JAX devices'\n"
    )
    proc = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_distributed_settings_are_checked():
    assert check_args(None, None, None) is False  # auto-detection
    assert check_args("10.0.0.1:1234", 2, 1) is True
    assert parse_address("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError, match="all of"):
        check_args("localhost:1234", 2, None)
    with pytest.raises(ValueError, match="process_id"):
        check_args("localhost:1234", 2, 2)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address("localhost")
    with pytest.raises(ValueError, match="mesh_data"):
        override(get_config("tiny"), mesh_data=-1)
