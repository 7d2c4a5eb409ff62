"""`robot-rl lake ingest` end to end on a local lake: rejection by default, quarantine report with
--skip-invalid, re-ingest as a no-op, and JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from data_lake import Lake
from robot_rl.cli import main as cli
from tests.test_ingest_writers import standard_recording, write_mcap_ros2

MAPPING = {
    "format": "mcap",
    "rate_hz": 10,
    "cameras": {"front": "/cam"},
    "state": [{"topic": "/joint_states", "field": "position"}],
    "action": ["/cmd"],
    "reward": {"topic": "/reward"},
    "task": {"topic": "/task"},
    "sync": {"max_staleness_s": 0.05},
}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    logs = tmp_path / "logs"
    logs.mkdir()
    write_mcap_ros2(logs / "a.mcap", standard_recording(seed=1))
    write_mcap_ros2(logs / "b.mcap", standard_recording(seed=2))
    rec = standard_recording(seed=3)
    del rec.topics["/task"]
    write_mcap_ros2(logs / "c.mcap", rec)
    mapping = tmp_path / "m.yaml"
    mapping.write_text(yaml.safe_dump(MAPPING))
    lake = tmp_path / "lake"
    assert cli(["lake", "init", str(lake)]) == 0
    return logs, mapping, lake


def test_cli_rejects_then_quarantines_then_noop(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    logs, mapping, lake = setup
    base = ["lake", "ingest", "--lake", str(lake), "--mapping", str(mapping), "-q"]
    report = lake.parent / "q.json"
    capsys.readouterr()
    assert cli([*base, str(logs), "--quarantine", str(report)]) == 2
    err = capsys.readouterr().err
    assert "[missing_source]" in err and "c.mcap" in err and "/task" in err and "nothing was committed" in err
    assert Lake.open(lake).checkout("main").episode_ids() == []
    assert json.loads(report.read_text())[0]["code"] == "missing_source"

    assert cli([*base, str(logs), "--skip-invalid", "--quarantine", str(report), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["added"] == 2 and out["episodes"] == 2 and out["frames"] == 38
    assert out["quarantine_report"] == str(report)
    q = json.loads(report.read_text())
    assert [(e["code"], Path(e["source"]).name, e["where"]) for e in q] == [("missing_source", "c.mcap", "/task")]
    assert set(out["sync"]) == {"/cam", "/joint_states", "/cmd", "/reward"}
    snap = out["snapshot_id"]

    assert cli([*base, str(logs / "a.mcap"), str(logs / "b.mcap"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["added"] == 0 and again["snapshot_id"] is None and len(again["skipped_files"]) == 2
    assert Lake.open(lake).resolve("main") == snap
    log = Lake.open(lake).log("main")
    assert log[0].operation == "append" and log[0].metadata["ingest"]["format"] == "mcap"


def test_cli_format_disagreement_and_text_output(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    logs, mapping, lake = setup
    capsys.readouterr()
    assert cli(["lake", "ingest", "--lake", str(lake), "--mapping", str(mapping), "--format", "ros1", str(logs)]) == 2
    assert "disagrees with the mapping's format: mcap" in capsys.readouterr().err
    assert cli(["lake", "ingest", "--lake", str(lake), "--mapping", str(mapping), "-q", str(logs / "a.mcap")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ingested 19 steps in 1 episodes from 1 mcap source(s)") and "added 1 to main" in out
    assert "/joint_states" in out and "max     3.00 ms" in out  # the sync table
