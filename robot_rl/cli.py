"""The `robot-rl` command: one entry point, one subcommand per stage of the flywheel.

A subcommand's module is imported only when that subcommand runs (the full ``robot-rl --help``
imports them all), so ``robot-rl lake ...`` starts without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from robot_rl import __version__

COMMANDS: dict[str, tuple[str, str]] = {  # name -> (module, function that adds its parser)
    "lake": ("data_lake.cli", "add_lake_parser"),
    "collect": ("robot_rl.collect_cmd", "add_collect_parser"),
    "pretrain": ("robot_rl.pretrain", "add_pretrain_parser"),
    "eval": ("robot_rl.eval_cmd", "add_eval_parser"),
    "finetune": ("robot_rl.finetune", "add_finetune_parser"),
    "compare": ("robot_rl.compare", "add_compare_parser"),
    "demo": ("robot_rl.demo", "add_demo_parser"),
    "ogbench": ("robot_rl.ogbench_cmd", "add_ogbench_parser"),
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
    from data_lake.cli import run

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
