"""Certification of saved runs: states consistent with the bounds and the attacks, APGD-CE, MILP, CLI."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcert
from jaxcert.attacks.apgd import apgd_attack, checkpoints
from jaxcert.attacks.pgd import pgd_attack
from jaxcert.bounds import margin_lower_bounds
from jaxcert.certify import STATES, certify_dataset, main
from jaxcert.nets import forward
from jaxcert.runs import load_test_split
from jaxcert.train.configs import get_config
from tests.test_checkpoint import assert_trees_equal
from tests.test_evaluate import spheres_net

EPS = 0.1  # on the tiny run: some examples certified, some broken by PGD, some misclassified
CASCADE = ("ibp", "crown-ibp", "crown")


@pytest.fixture
def run(tiny_run):
    return tiny_run


@functools.cache
def _report(run_dir):
    arch, params, config = jaxcert.load_run(run_dir)
    ds = load_test_split(config)
    report = certify_dataset(arch, params, ds, EPS, relaxations=CASCADE, pgd_steps=10, pgd_restarts=2,
                             apgd_steps=20, progress=False)  # fmt: skip
    return arch, params, ds, report


@pytest.mark.slow
def test_load_run_restores_the_trained_parameters_and_the_final_evaluation_used_the_cascade(run):
    run_dir, result = run
    arch, params, config = jaxcert.load_run(run_dir)
    assert arch == result["arch"] and config == get_config("tiny").__class__.from_dict(config.to_dict())
    assert_trees_equal(params, result["state"].full_params)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["relaxations"] == ["ibp", "crown-ibp"] and results["test_examples"] == 64
    assert results["cert_acc"] <= results["robust_acc"] <= results["pgd_acc"] <= results["clean_acc"]
    saved = json.loads((run_dir / "certify.json").read_text())
    assert len(saved["examples"]) == 64 and saved["summary"]["cert_acc"] == results["cert_acc"]


@pytest.mark.slow
def test_every_example_ends_in_one_state_consistent_with_the_bounds_and_the_attacks(run):
    arch, params, ds, report = _report(run[0])
    assert set(report.states) <= set(STATES) and report.states.shape == (len(ds),)
    counts = report.counts()
    assert sum(counts.values()) == len(ds)
    assert counts["verified"] > 0 and np.sum(report.by == "pgd") + np.sum(report.by == "apgd") > 0  # not vacuous
    falsified = report.states == "falsified"
    # a counterexample is in the clipped box and misclassified by a forward pass
    x_adv = report.counterexamples[falsified]
    assert np.all(np.abs(x_adv - ds.x[falsified]) <= EPS + 1e-6)
    assert np.all(np.argmax(np.asarray(forward(arch, params, x_adv)), -1) != ds.y[falsified])
    bound = jax.jit(margin_lower_bounds, static_argnums=0, static_argnames=("relaxation", "lo", "hi"))
    certified = {
        name: np.all(np.asarray(bound(arch, params, ds.x, ds.y, EPS, relaxation=name, lo=-np.inf, hi=np.inf)) > 0, -1)
        for name in CASCADE
    }
    # ... and no relaxation certifies a falsified example
    for name in CASCADE:
        assert not np.any(certified[name] & falsified), name
    verified = report.states == "verified"
    assert np.all(report.margin_lower[verified] > 0) and np.all(report.pgd_robust[verified])
    # the cascade credits the first relaxation that certifies, and earlier ones do not
    for k, name in enumerate(CASCADE):
        rows = (report.by == name) & verified
        assert np.all(certified[name][rows])
        for earlier in CASCADE[:k]:
            assert not np.any(certified[earlier][rows]), (earlier, name)
    acc = report.accuracies()
    assert acc["cert_acc"] <= acc["robust_acc"] <= acc["pgd_acc"] <= acc["clean_acc"]
    cumulative = [acc[f"cert_acc/{name}"] for name in CASCADE]
    assert cumulative == sorted(cumulative) and cumulative[-1] == acc["cert_acc"]


@pytest.mark.slow
def test_apgd_finds_at_least_as_many_adversarial_examples_as_one_pgd_restart(run):
    arch, params, config = jaxcert.load_run(run[0])
    ds = load_test_split(config)
    x, y, key = jnp.asarray(ds.x), jnp.asarray(ds.y), jax.random.key(1)
    broken = lambda x_adv: int(np.sum(np.argmax(np.asarray(forward(arch, params, x_adv)), -1) != ds.y))
    n_pgd = broken(pgd_attack(arch, params, x, y, EPS, key=key, steps=10, lo=-np.inf, hi=np.inf))
    n_apgd = broken(apgd_attack(arch, params, x, y, EPS, key=key, steps=50, lo=-np.inf, hi=np.inf))
    assert n_pgd > int(np.sum(np.argmax(np.asarray(forward(arch, params, x)), -1) != ds.y))  # PGD does something
    assert n_apgd >= n_pgd
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # Croce & Hein's schedule


@pytest.mark.slow
def test_the_milp_decides_every_example_the_relaxations_leave_open():
    arch, params, ds = spheres_net()  # 16 ReLUs
    report = certify_dataset(arch, params, ds, 0.03, relaxations=("ibp",), pgd_steps=5, apgd_steps=0, milp=True,
                             milp_time_limit=20.0, progress=False)  # fmt: skip
    assert report.counts()["unknown"] == 0 and report.counts()["timeout"] == 0
    by_milp = report.by == "milp"
    assert np.any(by_milp & (report.states == "verified"))  # IBP alone leaves some open at this ε
    assert np.all(report.pgd_robust[report.states == "verified"])
    assert "cert_acc/milp" in report.accuracies()


@pytest.mark.slow
def test_certify_cli_writes_json_and_markdown_and_rejects_bad_run_folders(run, tmp_path, capsys):
    run_dir = run[0]
    argv = [str(run_dir), "--limit", "16", "--relaxations", "ibp,crown-ibp", "--pgd-steps", "3", "--apgd-steps", "5"]
    assert main([*argv, "--no-progress", "--eps", str(EPS)]) == 0
    saved = json.loads((run_dir / f"certify-eps{EPS}-n16.json").read_text())
    assert saved["summary"]["examples"] == 16 and len(saved["examples"]) == 16
    assert {e["state"] for e in saved["examples"]} <= set(STATES)
    assert "| state | decided by | examples |" in (run_dir / f"certify-eps{EPS}-n16.md").read_text()
    assert "certifying" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "not a training run folder" in capsys.readouterr().err
    assert main([str(run_dir), "--relaxations", "nope", "--no-progress"]) == 2
    assert "unknown relaxation" in capsys.readouterr().err


@pytest.mark.slow
def test_certify_cli_writes_beside_the_training_report_unless_asked_to_replace_it(run, capsys):
    run_dir = run[0]
    argv = [str(run_dir), "--limit", "16", "--relaxations", "ibp", "--pgd-steps", "2", "--apgd-steps", "0",
            "--no-progress", "--eps", "0.05"]  # fmt: skip
    training_time = {name: (run_dir / name).read_text() for name in ("certify.json", "certify.md", "results.json")}
    assert main(argv) == 0
    beside = json.loads((run_dir / "certify-eps0.05-n16.json").read_text())
    assert beside["summary"]["examples"] == 16 and beside["summary"]["eps"] == 0.05
    assert (run_dir / "certify-eps0.05-n16.md").is_file()
    assert {name: (run_dir / name).read_text() for name in training_time} == training_time  # untouched
    assert main([*argv, "--output", "mine"]) == 0 and (run_dir / "mine.json").is_file()
    assert main([*argv, "--replace", "--output", "mine"]) == 2
    assert "--replace" in capsys.readouterr().err
    try:
        assert main([*argv, "--replace"]) == 0
        replaced = json.loads((run_dir / "certify.json").read_text())
        results = json.loads((run_dir / "results.json").read_text())
        assert replaced["summary"]["examples"] == 16 and results["test_examples"] == 16 and results["eps"] == 0.05
        assert results["relaxations"] == ["ibp"] and "cert_acc/crown-ibp" not in results  # the old cascade's keys go
        for key in ("clean_acc", "pgd_acc", "robust_acc", "cert_acc", "cert_acc/ibp"):
            assert results[key] == replaced["summary"][key]
        assert results["steps"] == json.loads(training_time["results.json"])["steps"]  # training figures stay
    finally:  # the run fixture is shared by the module's tests
        for name, text in training_time.items():
            (run_dir / name).write_text(text)


@pytest.mark.slow
def test_the_stages_run_cheapest_first_each_on_what_the_earlier_ones_left_open(run):
    from jaxcert.certify import stage_plan

    plan = [(s.kind, s.name) for s in stage_plan(("ibp", "crown-ibp", "crown", "alpha-crown"), 2, 1)]
    assert plan == [("clean", "clean"), ("bound", "ibp"), ("bound", "crown-ibp"), ("attack", "pgd"), ("attack", "pgd"),
                    ("attack", "apgd"), ("bound", "crown"), ("bound", "alpha-crown")]  # fmt: skip
    assert [s.name for s in stage_plan(("crown", "ibp"), 1, 0)] == ["clean", "pgd", "crown", "ibp"]
    _, _, ds, report = _report(run[0])
    stages = {s["stage"]: s["examples"] for s in report.stages}
    assert list(stages) == ["clean", "ibp", "crown-ibp", "pgd 1/2", "pgd 2/2", "apgd", "crown"]
    assert stages["clean"] == len(ds)
    assert stages["ibp"] == int(np.sum(report.clean))  # misclassified examples are not bounded
    # the attacks see only what the cheap relaxations left: never an example they verified
    cheap = np.isin(report.by, ("ibp", "crown-ibp")) & (report.states == "verified")
    assert cheap.sum() > 0 and stages["pgd 1/2"] == int(np.sum(report.clean)) - int(cheap.sum())
    # each later stage sees the previous one's open examples minus those it decided
    assert stages["apgd"] <= stages["pgd 2/2"] <= stages["pgd 1/2"]
    assert stages["apgd"] == stages["pgd 1/2"] - int(np.sum(report.by == "pgd"))
    assert stages["crown"] == stages["apgd"] - int(np.sum(report.by == "apgd"))
    assert stages["crown"] == int(np.sum(report.by == "crown")) + int(np.sum(report.states == "unknown"))


def test_apgd_stays_in_the_clipped_box_and_never_returns_a_point_better_than_the_clean_one():
    from jaxcert.attacks.pgd import classification_margin
    from tests.test_evaluate import image_net

    arch, params, ds = image_net()  # images in [0, 1]: the box gets clipped
    x_adv = np.asarray(apgd_attack(arch, params, ds.x, ds.y, 0.1, key=jax.random.key(0), steps=10, restarts=2))
    assert np.all(np.abs(x_adv - ds.x) <= 0.1 + 1e-6) and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    margin = lambda v: np.asarray(classification_margin(forward(arch, params, v), jnp.asarray(ds.y)))
    assert np.all(margin(x_adv) <= margin(ds.x) + 1e-6)
    assert np.sum(margin(x_adv) < 0) > np.sum(margin(ds.x) < 0)  # it does find adversarial examples
    with pytest.raises(ValueError, match="steps"):
        apgd_attack(arch, params, ds.x, ds.y, 0.1, key=jax.random.key(0), steps=0)
