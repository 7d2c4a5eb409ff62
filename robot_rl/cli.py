"""The `robot-rl` command: one entry point, one subcommand per stage of the flywheel; with
``robot_rl.commands`` it is the commands layer, on top of every other.

A subcommand's module is imported only when that subcommand runs (the full ``robot-rl --help``
imports them all), so ``robot-rl lake ...`` starts without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from robot_rl import __version__

COMMANDS: dict[str, tuple[str, str]] = {  # name -> (module, function that adds its parser)
    "lake": ("robot_rl.commands.lake", "add_lake_parser"),
    "collect": ("robot_rl.collect_cmd", "add_collect_parser"),
    "pretrain": ("robot_rl.pretrain", "add_pretrain_parser"),
    "eval": ("robot_rl.eval_cmd", "add_eval_parser"),
    "finetune": ("robot_rl.finetune", "add_finetune_parser"),
    "compare": ("robot_rl.compare", "add_compare_parser"),
    "demo": ("robot_rl.demo", "add_demo_parser"),
    "ogbench": ("robot_rl.ogbench_cmd", "add_ogbench_parser"),
    "ope": ("robot_rl.commands.ope", "add_ope_parser"),
    "detector": ("robot_rl.commands.detector", "add_detector_parser"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of ``only`` (the others are then not imported)."""
    parser = argparse.ArgumentParser(
        prog="robot-rl",
        description="robot-rl: robot logs -> a versioned episode lake -> goal-reaching skills.",
    )
    parser.add_argument("--version", action="version", version=f"robot-rl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, add) in COMMANDS.items():
        if only is None or name == only:
            getattr(importlib.import_module(module), add)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run a parsed subcommand; an expected error (bad input, a missing lake, a failed storage write)
    prints one ``error: ...`` line and returns 2 (``--verbose``: the traceback and every problem)."""
    import icechunk as ic

    try:
        rc = args.func(args)
    except (KeyError, ValueError, RuntimeError, OSError, ic.IcechunkError) as e:  # ours derive from these
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if getattr(args, "verbose", False):
            traceback.print_exc()
            msg = getattr(e, "details", msg)
        elif isinstance(e, ic.IcechunkError):  # storage errors our layer did not translate: the cause only
            msg = f"storage error ({msg.strip().splitlines()[0] if msg.strip() else type(e).__name__}); "
            msg += "--verbose shows the full error"
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
