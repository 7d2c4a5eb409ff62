"""The `robot-rl` command: one entry point, one subcommand per stage of the flywheel."""

from __future__ import annotations

import argparse
import sys

from robot_rl import __version__


def build_parser() -> argparse.ArgumentParser:
    from data_lake.cli import add_lake_parser
    from robot_rl.collect_cmd import add_collect_parser
    from robot_rl.compare import add_compare_parser
    from robot_rl.demo import add_demo_parser
    from robot_rl.eval_cmd import add_eval_parser
    from robot_rl.finetune import add_finetune_parser
    from robot_rl.pretrain import add_pretrain_parser

    parser = argparse.ArgumentParser(
        prog="robot-rl",
        description="robot-rl: robot logs -> a versioned episode lake -> goal-reaching skills.",
    )
    parser.add_argument("--version", action="version", version=f"robot-rl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_lake_parser(sub)
    add_collect_parser(sub)
    add_pretrain_parser(sub)
    add_eval_parser(sub)
    add_finetune_parser(sub)
    add_compare_parser(sub)
    add_demo_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from data_lake.cli import run

    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
