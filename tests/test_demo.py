"""Smoke run of the real `robot-rl demo` entry point with a tiny configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_lake import Lake
from robot_rl.cli import main as cli


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    rc = cli(["demo", "--out", str(out), "--play-episodes", "2", "--task-episodes", "2", "--workers", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "verify v1: 4 episode hashes recomputed: OK" in text
    assert (out / "batch.png").stat().st_size > 10_000
    lake = Lake.open(out / "lake")
    assert set(lake.tags()) == {"v1", "v1-labelled"} and set(lake.branches()) == {"main", "no-play"}
    assert len(lake.checkout("no-play")) == 2 and len(lake.checkout("main")) == 4
    assert len(list((out / "export").glob("*.npz"))) == 2
