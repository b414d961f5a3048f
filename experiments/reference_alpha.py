"""auto_LiRPA CROWN-Optimized (alpha-CROWN) margin lower bounds for bench_alpha.py, run in the reference venv.

Not part of jaxcert: it imports only numpy, torch and auto_LiRPA, and is started by
``experiments/bench_alpha.py --reference VENV`` as ``VENV/bin/python reference_alpha.py CASE.npz OUT.npz``.
The weights follow /work/shared/reference/README.md: NHWC/HWIO/(in, out) become NCHW/OIHW/(out, in), the
Dense after Flatten is permuted from HWC to CHW order, Normalize is a depthwise 1×1 convolution (weight
1/std, bias −mean/std); the forward outputs are checked against jaxcert's (≤ 1e-5) before bounding.
Writes ``lb`` (N, K-1, rows e_y − e_j for j ≠ y in increasing j), ``seconds`` (bounding only) and
``peak_rss_gib`` (the process's peak resident memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch
from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm


def torch_model(layers: list[dict], params: dict[str, np.ndarray], in_shape: tuple[int, int, int]) -> torch.nn.Module:
    """The jaxcert layer list as a torch Sequential on NCHW inputs."""
    h, w, c = in_shape
    modules: list[torch.nn.Module] = []
    flat_shape = None
    for i, spec in enumerate(layers):
        kind = spec["kind"]
        if kind == "Normalize":
            conv = torch.nn.Conv2d(c, c, 1, groups=c)
            std, mean = np.asarray(spec["std"], np.float32), np.asarray(spec["mean"], np.float32)
            conv.weight.data = torch.tensor(np.broadcast_to(1 / std, (c,)).reshape(c, 1, 1, 1).copy())
            conv.bias.data = torch.tensor(np.broadcast_to(-mean / std, (c,)).copy())
            modules.append(conv)
        elif kind == "Conv":
            kernel = params[f"p{i}_kernel"]  # HWIO
            conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], spec["kernel"], spec["stride"], spec["padding"])
            conv.weight.data = torch.tensor(kernel.transpose(3, 2, 0, 1).copy())
            conv.bias.data = torch.tensor(params[f"p{i}_bias"])
            modules.append(conv)
            size = lambda n: (n + 2 * spec["padding"] - spec["kernel"]) // spec["stride"] + 1
            h, w, c = size(h), size(w), kernel.shape[3]
        elif kind == "ReLU":
            modules.append(torch.nn.ReLU())
        elif kind == "Flatten":
            modules.append(torch.nn.Flatten())
            flat_shape = (h, w, c)
        elif kind == "Dense":
            kernel = params[f"p{i}_kernel"]  # (in, out), inputs in HWC order after Flatten
            if flat_shape is not None:
                fh, fw, fc = flat_shape
                kernel = kernel.reshape(fh, fw, fc, -1).transpose(2, 0, 1, 3).reshape(fh * fw * fc, -1)
                flat_shape = None
            dense = torch.nn.Linear(kernel.shape[0], kernel.shape[1])
            dense.weight.data = torch.tensor(kernel.T.copy())
            dense.bias.data = torch.tensor(params[f"p{i}_bias"])
            modules.append(dense)
        else:
            raise ValueError(f"reference_alpha: layer kind {kind!r} is not converted")
    return torch.nn.Sequential(*modules).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("case")
    p.add_argument("out")
    p.add_argument("--eps", type=float, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--lr-decay", type=float, default=0.98, help="auto_LiRPA's default, set explicitly")
    p.add_argument("--slice", type=int, required=True)
    args = p.parse_args()
    torch.set_num_threads(2)
    case = np.load(args.case)
    params = {k: case[k] for k in case.files if k.startswith("p")}
    layers = json.loads(str(case["layers"]))
    x, y, logits = case["x"], case["y"], case["logits"]
    model = torch_model(layers, params, x.shape[1:])
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        gap = float(np.max(np.abs(model(xt).numpy() - logits)))
    if gap > 1e-4:
        raise SystemExit(f"reference_alpha: converted forward differs from jaxcert's by {gap}")
    k = logits.shape[1]
    bounded = BoundedModule(model, xt[: args.slice], device="cpu")
    bounded.set_bound_opts(
        {"optimize_bound_args": {"iteration": args.steps, "lr_alpha": args.lr, "lr_decay": args.lr_decay}}
    )
    out, seconds = [], 0.0
    for i in range(0, len(x), args.slice):
        xs, ys = xt[i : i + args.slice], y[i : i + args.slice]
        others = np.array([[j for j in range(k) if j != label] for label in ys])
        C = np.eye(k, dtype=np.float32)[ys][:, None, :] - np.eye(k, dtype=np.float32)[others]
        lo, hi = torch.clamp(xs - args.eps, 0, 1), torch.clamp(xs + args.eps, 0, 1)
        bx = BoundedTensor(xs, PerturbationLpNorm(norm=np.inf, x_L=lo, x_U=hi))
        start = time.perf_counter()
        lb, _ = bounded.compute_bounds(x=(bx,), C=torch.tensor(C), method="CROWN-Optimized", bound_upper=False)
        seconds += time.perf_counter() - start
        out.append(lb.detach().numpy())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    np.savez(args.out, lb=np.concatenate(out), seconds=seconds, peak_rss_gib=peak)


if __name__ == "__main__":
    main()
