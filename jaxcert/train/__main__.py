"""``python -m jaxcert.train --config NAME [overrides]``: train, checkpoint, evaluate, print accuracies."""

from __future__ import annotations

import argparse
import sys

from jaxcert.train.configs import CONFIGS, get_config, override


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jaxcert.train", description=__doc__)
    p.add_argument("--config", default="quickstart", help=f"named recipe: {', '.join(sorted(CONFIGS))}")
    p.add_argument("--method", help="standard | pgd | certified | rgs | pgpe")
    p.add_argument("--arch")
    p.add_argument("--dataset", help="fashion_mnist | mnist | cifar10 | spheres")
    p.add_argument("--data-dir")
    p.add_argument("--train-limit", type=int, help="use only the first N training examples")
    p.add_argument("--test-limit", type=int, help="evaluate on the first N test examples")
    p.add_argument("--relaxation", help="bound used by the certified loss (ibp, crown-ibp, deeppoly, ...)")
    p.add_argument("--eps", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--sigma", type=float, help="GLS standard deviation")
    p.add_argument("--population", type=int, help="PGPE population size")
    p.add_argument("--samples", type=int, help="RGS samples per step")
    p.add_argument("--member-chunk", type=int, help="GLS: evaluate samples/members N at a time (0: all, vmap)")
    p.add_argument("--member-unroll", action="store_true", default=None, help="GLS: unroll the member chunks (CPU)")
    p.add_argument("--devices", type=int, help="shard GLS samples / the batch over N devices (0: all)")
    p.add_argument("--mesh-data", type=int, help="devices along the batch axis of the batch × members mesh (0: auto)")
    p.add_argument("--distributed", action="store_true", default=None, help="join a multi-process run")
    p.add_argument("--coordinator", help="multi-process: HOST:PORT of process 0 (omit all three to auto-detect)")
    p.add_argument("--num-processes", type=int, help="multi-process: number of processes")
    p.add_argument("--process-id", type=int, help="multi-process: this process's id in [0, N)")
    p.add_argument("--distributed-timeout", type=float, help="multi-process: seconds for all processes to join")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--out")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation on the test split")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k not in ("config", "resume", "no_progress", "no_eval")}
    try:
        config = override(get_config(args.config), **fields)
        if args.out is None:
            config = override(config, out=f"runs/{config.name}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from jaxcert.train.distributed import DistributedInitError, is_main_process
    from jaxcert.train.loop import train

    try:
        result = train(config, resume=args.resume, progress=not args.no_progress, evaluate=not args.no_eval)
    except (ValueError, FileNotFoundError, DistributedInitError) as e:  # bad settings, no data, no coordinator
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not is_main_process():  # a multi-process run reports once, from process 0
        return 0
    if args.no_eval:
        print(f"{config.name}: trained {config.steps} steps; outputs in {result['out']}")
        return 0
    scores = result["eval"]
    line = " | ".join(f"{k} {100 * v:.1f}%" for k, v in scores.items())
    print(f"{config.name} ({config.method}, {config.relaxation}, eps={config.test_eps}): {line}")
    print(f"outputs in {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
