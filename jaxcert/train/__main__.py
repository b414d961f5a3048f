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
    p.add_argument("--sigma-rel", type=float, help="GLS: sigma per leaf = SIGMA_REL * std of the leaf at init")
    p.add_argument("--std-lr", type=float, help="PGPE sigma learning rate (0: fixed sigma)")
    p.add_argument("--pgpe-optimizer", help="PGPE mean optimiser: clipup | sgd | adam")
    p.add_argument("--max-speed", type=float, help="PGPE ClipUp max step norm (0: 2 * lr)")
    p.add_argument("--momentum", type=float, help="PGPE mean optimiser momentum (clipup, sgd)")
    p.add_argument("--weight-decay", type=float, help="PGPE decoupled weight decay of the mean per generation")
    p.add_argument("--init-from", help="warm start: RUN_DIR of a saved run; fine-tune its latest checkpoint")
    p.add_argument("--population", type=int, help="PGPE population size")
    p.add_argument("--samples", type=int, help="RGS samples per step")
    p.add_argument("--member-chunk", type=int, help="GLS: evaluate samples/members N at a time (0: all, vmap)")
    p.add_argument("--member-unroll", action="store_true", default=None, help="GLS: unroll the member chunks (CPU)")
    p.add_argument("--devices", type=int, help="shard GLS samples / the batch over N devices (0: all)")
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
    from jaxcert.train.loop import train

    try:
        result = train(config, resume=args.resume, progress=not args.no_progress, evaluate=not args.no_eval)
    except (ValueError, FileNotFoundError) as e:  # bad settings, or no offline copy of the data set
        print(f"error: {e}", file=sys.stderr)
        return 2
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
