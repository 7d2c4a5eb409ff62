"""`robot-rl ope ckpt=... lake.uri=... task=...|goals=...`: off-policy evaluation of one or more checkpoints on a
pinned lake snapshot, before deploying them. Prints a table (every estimate with its bootstrap
interval, the importance weights' effective sample size and warnings, a ranking of several
checkpoints, the metrics against truth=FILE) and writes ``ope.json`` and ``ope.png`` to ``out``.
The evaluation itself is ``robot_rl.ope.run``; the guide is docs/ope.md."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robot_rl.hydra_utils import describe


def add_ope_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "ope",
        help="off-policy evaluation of checkpoints on logged lake data (FQE, IS, DR, DualDICE, LSTD-Q)",
        description=__doc__ + "\n\nDefaults (configs/ope/ope.yaml):\n\n" + describe("ope"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="key=value settings, e.g. ckpt=[runs/a,runs/b] task=tabletop/reach_red sigma=0.2 (or goals=[final])",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="on errors, the traceback")
    p.set_defaults(func=lambda a: run_ope_command(a.overrides))


def run_ope_command(overrides: list[str]) -> int:
    from robot_rl.config import from_dict
    from robot_rl.hydra_utils import compose
    from robot_rl.ope.run import OPEConfig, default_out, format_report, run_ope, write_outputs

    c: dict[str, Any] = compose("ope", overrides)
    ckpt, task, goals, out = c.pop("ckpt"), c.pop("task"), c.pop("goals"), c.pop("out")
    ckpts, tasks, sources = (_as_list(v) for v in (ckpt, task, goals))
    cfg = from_dict(OPEConfig, {**c, "ckpt": ckpts, "tasks": tasks, "goals": sources})
    report = run_ope(cfg)
    print(format_report(report))
    json_path, png = write_outputs(report, Path(out) if out else default_out(ckpts))
    print(f"\nsummary: {json_path}  figure: {png}")
    return 0


def _as_list(value: Any) -> list[Any]:
    """A scalar override (``task=a``), a list (``task=[a,b]``) or null, as a list."""
    return [] if value is None else [value] if isinstance(value, str) else list(value)
