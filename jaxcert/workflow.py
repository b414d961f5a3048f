"""Train, then certify: the end-to-end run of ``python -m jaxcert.train``, above both the training loop
and the certifier.

    train(config) = run_training(config)                  (jaxcert.train.loop: steps, checkpoints, metrics)
                  → certify_dataset(test split, cascade)  (jaxcert.certify: certify.json / .md)
                  → results.json, curves.png

The training loop does not import :mod:`jaxcert.certify`, and :mod:`jaxcert.certify` (through
:mod:`jaxcert.runs`) does not import the training loop; this module is the only place that joins them.
"""

from __future__ import annotations

import json
from typing import Any

from jaxcert.certify import certify_dataset, write_report
from jaxcert.provenance import provenance
from jaxcert.train import distributed as dist
from jaxcert.train.configs import TrainConfig
from jaxcert.train.loop import TrainedRun, plot_run, run_training, say


def train(config: TrainConfig, *, resume: bool = True, progress: bool = True, evaluate: bool = True) -> dict:
    """Run ``config`` end to end; returns ``{"state", "arch", "metrics", "out"}`` and, with ``evaluate``,
    ``"eval"`` (the accuracies of the final certification, :func:`final_certification`).

    ``resume=True`` (the default) continues from the newest readable checkpoint in ``config.out``, if any;
    ``resume=False`` deletes the folder's previous checkpoints and metrics and starts at step 0."""
    run = run_training(config, resume=resume, progress=progress)
    result: dict[str, Any] = {"state": run.state, "arch": run.arch, "metrics": run.records, "out": run.out}
    records = run.records
    if evaluate:
        scores = final_certification(config, run, progress=progress)
        result["eval"] = scores
        records = [*records, {"step": config.steps, **{f"test_{k}": v for k, v in scores.items()}}] if run.main else []
    if records:
        plot_run(config, records, run.out)
    return result


def final_certification(config: TrainConfig, run: TrainedRun, *, progress: bool = True) -> dict[str, float]:
    """Certify the trained network on the test split by ``config.eval_cascade`` (with the attacks of the
    ``eval_*`` fields and ``config.relaxation_options``); process 0 writes ``certify.json`` / ``.md`` and
    ``results.json``. Returns the accuracies (:meth:`jaxcert.certify.CertifyReport.accuracies`)."""
    test_ds = run.test_ds
    n_test = min(len(test_ds), config.test_limit or len(test_ds))
    cascade = config.eval_cascade
    if run.main:
        say(
            f"final evaluation on {n_test} test examples ({test_ds.source or 'memory'}), eps={config.test_eps}: "
            f"PGD {config.eval_pgd_steps} steps x {config.eval_pgd_restarts} restarts, APGD-CE "
            f"{config.eval_apgd_steps} steps, certified by {' -> '.join(cascade)}"
        )
    # multi-process: every process holds all the params and certifies its share of the test examples
    params = dist.to_host(run.state.full_params) if run.multi else run.state.full_params
    report = certify_dataset(
        run.arch, params, test_ds, config.test_eps, relaxations=cascade, pgd_steps=config.eval_pgd_steps,
        pgd_restarts=config.eval_pgd_restarts, apgd_steps=config.eval_apgd_steps,
        batch_size=config.eval_batch_size, limit=config.test_limit, seed=config.seed,
        progress=progress and run.main, distributed=run.multi, relaxation_options=config.relaxation_options,
    )  # fmt: skip
    scores = report.accuracies()
    training = {"method": config.method, "objective": config.objective, "relaxation": config.relaxation}
    report.settings["training"] = training  # the trained method in certify.json/.md
    if run.main:
        write_report(report, run.out)
        summary = {"eps": config.test_eps, "test_examples": n_test, "relaxations": list(cascade), **training}
        summary |= {"data_source": {"train": run.train_ds.source, "test": test_ds.source}}
        summary |= {"train_seconds": run.train_seconds, "steps": config.steps, **scores, "provenance": provenance()}
        (run.out / "results.json").write_text(json.dumps(summary, indent=2))
    return scores
