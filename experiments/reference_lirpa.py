"""The PyTorch reference side of ``experiments/bench_reference.py`` (auto_LiRPA on CPU torch).

Run ONLY in the reference's own virtual environment (``../shared/reference/setup_reference.sh VENV``), as a
separate process: ``VENV/bin/python experiments/reference_lirpa.py PLAN.json OUT.json``. It never imports
jaxcert (nor jax); the package never imports it. The plan names the cases (an ``.npz`` written by the
jaxcert side: the architecture spec, the weights in jaxcert's layout, inputs, labels, ε and jaxcert's
logits) and the rows to time.

Weights are converted from jaxcert's layout (NHWC activations, HWIO kernels, Dense kernels (in, out)) to
PyTorch's (NCHW, OIHW, (out, in)); the first Dense after Flatten has its input rows permuted from HWC to
CHW order (:func:`dense_after_flatten`); ``Normalize`` becomes a depthwise 1×1 convolution with weight
``1/std`` and bias ``−mean/std`` (auto_LiRPA's CROWN in patches mode fails on ``(x − mean)/std``). The
converted model's logits must match jaxcert's to ``--tolerance`` before anything is timed.

Work per row (margin lower bounds, ``C`` = the margin specification, ``bound_upper=False``):

* ``bounds``: ``compute_bounds`` under ``no_grad``;
* ``train``: the bounds, the mean certified cross-entropy ``log(1 + Σ_j exp(−m_j))`` and its gradient in
  the weights (``backward``);
* ``population``: a Python loop over ``members`` weight perturbations ``θ + σ z`` (set in place), each
  the ``bounds`` work and its certified loss (a PGPE generation's fitness);
* ``rgs``: the same loop with ``train``'s gradient per member, accumulated (an RGS step's estimate).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak_memory import peak_gib, reset_peak
from timed_calls import timed_call_count

#: jaxcert relaxation -> auto_LiRPA method
METHODS = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN", "deeppoly": "CROWN"}


def dense_after_flatten(kernel: np.ndarray, in_shape: tuple[int, int, int]) -> np.ndarray:
    """A jaxcert Dense kernel ``(H·W·C, out)`` reading an HWC-flattened input -> PyTorch's ``(out, C·H·W)``
    reading a CHW-flattened one: ``W_t[o, c·HW + h·W + w] = K[(h·W + w)·C + c, o]``."""
    h, w, c = in_shape
    return kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], c * h * w)


def build_model(spec: list[dict[str, Any]], weights: dict[str, np.ndarray]) -> nn.Sequential:
    """The PyTorch twin of a jaxcert architecture spec (see the module docstring for the conversions)."""
    layers: list[nn.Module] = []
    flat_shape: tuple[int, int, int] | None = None
    for i, layer in enumerate(spec):
        kind = layer["kind"]
        if kind == "Normalize":
            mean, std = np.asarray(layer["mean"], np.float32), np.asarray(layer["std"], np.float32)
            conv = nn.Conv2d(len(mean), len(mean), 1, groups=len(mean))
            conv.weight.data = torch.from_numpy((1 / std).reshape(-1, 1, 1, 1))
            conv.bias.data = torch.from_numpy(-mean / std)
            layers.append(conv)
        elif kind == "Conv":
            kernel = weights[f"{i}.kernel"]  # HWIO
            conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[0], layer["stride"], layer["padding"])
            conv.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
            conv.bias.data = torch.from_numpy(weights[f"{i}.bias"])
            layers.append(conv)
        elif kind == "ReLU":
            layers.append(nn.ReLU())
        elif kind == "Flatten":
            flat_shape = tuple(layer["in_shape"])  # type: ignore[assignment]
            layers.append(nn.Flatten())
        elif kind == "Dense":
            kernel = weights[f"{i}.kernel"]
            if flat_shape is not None and len(flat_shape) == 3:
                kernel_t = dense_after_flatten(kernel, flat_shape)
                flat_shape = None
            else:
                kernel_t = kernel.T
            dense = nn.Linear(kernel.shape[0], kernel.shape[1])
            dense.weight.data = torch.from_numpy(np.ascontiguousarray(kernel_t))
            dense.bias.data = torch.from_numpy(weights[f"{i}.bias"])
            layers.append(dense)
        else:
            raise ValueError(f"layer kind {kind!r} has no PyTorch twin in the reference benchmark")
    return nn.Sequential(*layers)


def load_case(path: str | Path) -> dict[str, Any]:
    """A case file: ``spec`` (JSON), weights ``"<layer>.<name>"``, ``x`` (NHWC), ``y``, ``eps``, ``logits``."""
    data = np.load(path)
    weights = {k[2:]: data[k] for k in data.files if k.startswith("w:")}
    return {
        "spec": json.loads(str(data["spec"])),
        "weights": weights,
        "x": np.ascontiguousarray(data["x"].transpose(0, 3, 1, 2)),  # NHWC -> NCHW
        "y": data["y"].astype(np.int64),
        "eps": float(data["eps"]),
        "logits": data["logits"],
    }


def check_forward(model: nn.Module, case: dict[str, Any], tolerance: float) -> float:
    """Largest |PyTorch logits − jaxcert logits| on the case's inputs; ``ValueError`` above ``tolerance``."""
    with torch.no_grad():
        ours = model(torch.from_numpy(case["x"])).numpy()
    error = float(np.max(np.abs(ours - case["logits"])))
    if error > tolerance:
        raise ValueError(f"converted weights disagree with jaxcert: max |Δ logits| = {error:.3g} > {tolerance:g}")
    return error


def margin_spec(y: torch.Tensor, classes: int) -> torch.Tensor:
    """``C`` of shape (B, classes − 1, classes): rows ``e_y − e_j`` for every ``j ≠ y`` (jaxcert's order)."""
    eye = torch.eye(classes)
    idx = torch.arange(classes - 1)[None, :]
    others = idx + (idx >= y[:, None]).long()
    return eye[y][:, None, :] - eye[others]


def certified_loss(margin_lb: torch.Tensor) -> torch.Tensor:
    """Mean certified cross-entropy ``logsumexp([0, −m])`` over the batch."""
    zeros = torch.zeros(margin_lb.shape[0], 1)
    return torch.logsumexp(torch.cat([zeros, -margin_lb], dim=1), dim=1).mean()


class Case:
    """One case's bounded model and inputs, for the row kinds of the module docstring."""

    def __init__(self, case: dict[str, Any], batch: int, tolerance: float):
        from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

        self.model = build_model(case["spec"], case["weights"])
        self.forward_error = check_forward(self.model, case, tolerance)
        x = torch.from_numpy(case["x"][:batch])
        y = torch.from_numpy(case["y"][:batch])
        eps = case["eps"]
        self.bounded = BoundedModule(self.model, torch.empty_like(x[:1]), device="cpu")
        ptb = PerturbationLpNorm(norm=np.inf, eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1))
        self.x = BoundedTensor(x, ptb)
        self.C = margin_spec(y, case["logits"].shape[1])
        self.params = [p for p in self.bounded.parameters() if p.requires_grad]
        self.base = [p.detach().clone() for p in self.params]

    def margin_lb(self, method: str) -> torch.Tensor:
        lb, _ = self.bounded.compute_bounds(x=(self.x,), C=self.C, method=method, bound_upper=False)
        return lb

    def perturb(self, sigma: float) -> None:
        with torch.no_grad():
            for p, b in zip(self.params, self.base, strict=True):
                p.copy_(b + sigma * torch.randn_like(b))

    def work(self, kind: str, method: str, members: int, sigma: float) -> Any:
        """One call of the row's work (see the module docstring)."""
        if kind == "bounds":
            with torch.no_grad():
                return self.margin_lb(method)
        if kind == "train":
            self.bounded.zero_grad(set_to_none=True)
            loss = certified_loss(self.margin_lb(method))
            loss.backward()
            return loss.item()
        if kind == "population":
            losses = []
            with torch.no_grad():
                for _ in range(members):
                    self.perturb(sigma)
                    losses.append(certified_loss(self.margin_lb(method)).item())
            return losses
        if kind == "rgs":
            self.bounded.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(members):
                self.perturb(sigma)
                loss = certified_loss(self.margin_lb(method)) / members
                loss.backward()  # gradients accumulate over the members: their mean
                total += loss.item()
            return total
        raise ValueError(f"unknown work {kind!r}")


def time_row(case: Case, row: dict[str, Any]) -> dict[str, Any]:
    """Warm-up call, then :func:`timed_calls.timed_call_count` timed calls; the fastest counts."""
    method = METHODS[row["relaxation"]]
    call = lambda: case.work(row["work"], method, row.get("members", 1), row.get("sigma", 0.01))
    reset_peak()
    start = time.perf_counter()
    call()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(timed_call_count(row["repeats"], warmup, row["max_seconds"])):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    examples = row["batch"] * row.get("members", 1)
    return {
        "seconds": min(times),
        "throughput": examples / min(times),
        "peak_gib": peak_gib(),
        "warmup_s": warmup,
        "load": os.getloadavg()[0],
    }


def main(argv: list[str]) -> None:
    plan = json.loads(Path(argv[0]).read_text())
    from bench_sides import pin_to_side_cpus  # stdlib only: importable in the reference's environment

    pin_to_side_cpus()  # the CPUs bench_reference.py gives this side
    torch.set_num_threads(plan.get("threads", 2))
    torch.manual_seed(0)
    results = []
    cases: dict[tuple[str, int], Case] = {}
    for row in plan["rows"]:
        out = {"name": row["name"]}
        try:
            key = (row["case"], row["batch"])
            if key not in cases:
                cases.clear()  # one case at a time: a CNN7 model does not sit beside CNN3's rows
                cases[key] = Case(load_case(row["case"]), row["batch"], plan.get("tolerance", 1e-6))
            out["forward_error"] = cases[key].forward_error
            out.update(time_row(cases[key], row))
        except Exception as err:  # a failing row is reported, the others still run
            out["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        results.append(out)
        print(json.dumps(out), flush=True)
    Path(argv[1]).write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "rows": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
