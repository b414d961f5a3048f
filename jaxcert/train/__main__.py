"""``python -m jaxcert.train --config NAME [--config-file F] [--FIELD VALUE ...]``: train, checkpoint,
evaluate, print accuracies.

Rerunning a command resumes from the checkpoints in its output folder (``--fresh`` starts over); rerunning
a finished run changes nothing. Ctrl-C saves a checkpoint. Every field of the config is a flag (see the
"config fields" below). Errors are one line (``error: ...``, exit status 2), found before any set-up work
where possible.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys

from jaxcert.cli import OneLineParser, command_name, one_line, one_line_warnings
from jaxcert.train.config_cli import add_config_flags, config_fields, default_out, read_config_file
from jaxcert.train.configs import CONFIGS, TrainConfig, get_config
from jaxcert.train.preflight import preflight
from jaxcert.train.resume import finished_message

EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=command_name("jaxcert.train"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="quickstart", help=f"named recipe: {', '.join(sorted(CONFIGS))}")
    p.add_argument("--config-file", help="JSON (or YAML, with PyYAML) file of config fields over the recipe")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--fresh", action="store_true", help="start over: delete the checkpoints and metrics in the folder")
    p.add_argument("--resume", action="store_true", help="resume from the folder's checkpoints (the default)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation on the test split")
    p.add_argument(
        "--release-host-memory",
        action="store_true",
        help="return freed host memory to the system (by default the command keeps it, so that XLA:CPU reuses "
        "its large buffers' pages between steps instead of faulting them in afresh: jaxcert.cpu_runtime)",
    )
    add_config_flags(p.add_argument_group("config fields (default: the recipe's value)"))
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The recipe, then the config file, then the flags; ``out`` from :func:`default_out` unless given."""
    config = get_config(args.config)
    overrides = read_config_file(args.config_file) if args.config_file else {}
    flags = config_fields(args)
    if "relaxation_options" in flags:  # each --relaxation-option sets one option over the recipe's and the file's
        earlier = overrides.get("relaxation_options", config.relaxation_options)
        flags["relaxation_options"] = {**earlier, **flags["relaxation_options"]}
    overrides |= flags
    config = dataclasses.replace(config, **overrides)
    if "out" not in overrides:
        config = dataclasses.replace(config, out=default_out(config, overrides))
    return config


def _error(err: Exception | str) -> int:
    """Print ``error: ...`` (one line) on stderr; returns the exit status 2."""
    print(f"error: {one_line(str(err))}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None, *, host_memory: bool = False) -> int:
    """The command; ``host_memory``: keep freed host memory for reuse (as ``python -m jaxcert.train`` does,
    unless ``--release-host-memory``), which takes effect only before JAX starts in this process."""
    args = parse_args(argv)
    if args.fresh and args.resume:
        return _error("--fresh and --resume exclude each other")
    try:
        config = resolve_config(args)
    except (ValueError, FileNotFoundError, TypeError) as e:
        return _error(e)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    try:  # before any set-up work: names, folders, a resumable or a finished run
        preflight(config, resume=not args.fresh)
        finished = None if args.fresh else finished_message(config, evaluate=not args.no_eval)
    except (ValueError, FileNotFoundError) as e:
        return _error(e)
    if finished:
        print(finished)
        return 0
    if host_memory and not args.release_host_memory:
        from jaxcert.cpu_runtime import keep_freed_host_memory_if_fresh

        if keep_freed_host_memory_if_fresh():
            print("host memory: freed buffers are kept for reuse between steps (--release-host-memory: off)")
    from jaxcert.cpu_convolutions import use_eigen_for_run_if_fresh

    convolutions = use_eigen_for_run_if_fresh(config.arch, config.dataset, config.batch_size)
    if convolutions:
        print(convolutions)
    from jaxcert.data import DatasetNotFoundError
    from jaxcert.train.distributed import DistributedInitError, is_main_process
    from jaxcert.train.loop import NonFiniteLossError, RunInterrupted
    from jaxcert.workflow import train

    try:
        with one_line_warnings():
            result = train(config, resume=not args.fresh, progress=not args.no_progress, evaluate=not args.no_eval)
    except DatasetNotFoundError as e:  # its message lists the ways to get the data, one per line
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError, DistributedInitError, NonFiniteLossError) as e:  # a foreign checkpoint, a diverged run
        return _error(e)
    except RunInterrupted as e:
        print(f"\ninterrupted at step {e.step}: checkpoint saved in {e.checkpoint_dir}.", file=sys.stderr)
        print(f"Resume with (add --fresh to start over instead): {_command()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # before the first step or during the final evaluation
        print(
            f"\ninterrupted; checkpoints (if any) are in {config.out}. Rerun the same command to resume.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if not is_main_process():  # a multi-process run reports once, from process 0
        return 0
    if args.no_eval:
        print(f"{result['out'].name}: trained {config.steps} steps; outputs in {result['out']}")
        return 0
    scores = result["eval"]
    line = " | ".join(f"{k} {100 * v:.1f}%" for k, v in scores.items() if k.endswith("acc") or "acc/" in k)
    print(f"{result['out'].name} ({config.method_label}, {config.relaxation}, eps={config.test_eps}): {line}")
    print(f"outputs in {result['out']}")
    return 0


def _command() -> str:
    """This command line without ``--fresh`` (which would start over instead of resuming)."""
    return shlex.join([*command_name("jaxcert.train").split(), *(a for a in sys.argv[1:] if a != "--fresh")])


if __name__ == "__main__":
    sys.exit(main(host_memory=True))
