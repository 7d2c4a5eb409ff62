"""Shared output of every benchmark: a table on stdout and the flat JSON file."""

from __future__ import annotations

import json
from pathlib import Path


def with_ci(figs: dict[str, float], key: str, summary: dict) -> None:
    """``figs[key]`` = an evaluation summary's success rate, ``key_ci_low``/``key_ci_high`` its Wilson interval."""
    figs[key] = float(summary["success_rate"])
    figs[f"{key}_ci_low"], figs[f"{key}_ci_high"] = (float(x) for x in summary["success_ci95"])


def report(figs: dict[str, float], targets: dict[str, str], json_path: str | None, skip: tuple[str, ...] = ()) -> None:
    """Print ``figure  value  target`` rows (``skip`` keys only go to the JSON), then write JSON."""
    width = max(28, *(len(k) for k in figs))
    print(f"{'figure':{width}s} {'value':>10s}   target")
    for k, v in figs.items():
        if k not in skip:
            print(f"{k:{width}s} {v:10.2f}   {targets.get(k, '')}")
    if json_path:
        Path(json_path).write_text(json.dumps(figs, indent=1))
