"""End-to-end smoke run of the real `robot-rl demo` (scale=tiny): collect -> lake -> pretrain ->
finetune -> flywheel commits -> report, with every success rate checked against its evaluation JSON."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from data_lake import Lake
from robot_rl import checkpoint
from robot_rl.cli import main as cli


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert cli(["demo", "scale=tiny", f"out={out}", "progress=false"]) == 0
    text = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in text

    # the lake: collected commits on main (tagged), flywheel commits on finetune/ branches
    lake = Lake.open(out / "lake")
    main_log = lake.log("main")
    assert sum(c.message.startswith("collect ") for c in main_log) == 5 and "v1" in lake.tags()
    flywheel = [b for b in lake.branches() if b.startswith("finetune/")]
    assert len(flywheel) == 2
    for b in flywheel:
        tip = lake.log(b)[0]
        assert tip.message.startswith("finetune ") and tip.metadata["kind"] == "finetune"
        online = [r for r in lake.checkout(b).episodes() if r.metadata.get("kind") == "finetune"]
        assert online and all(r.task == "tabletop/reach_red" for r in online)
    assert len(lake.checkout("main")) == len(lake.checkout("v1")), "finetuning never writes to main"

    # checkpoints exist and load
    for d in (out / "pretrain" / "checkpoints" / "latest", out / "finetune" / "pretrained_aux" / "seed0" / "policy"):
        algo, meta = checkpoint.load_policy(d)
        assert algo.step > 0 and meta["lake"]["snapshot_id"] == lake.resolve("v1")

    # the report: every success rate matches the evaluation JSON it cites
    report = (out / "report.md").read_text()
    rows = re.findall(r"^\| ([^|]+) \| ([0-9.]+) \| \[([0-9.]+), ([0-9.]+)\] \| \d+ \| `([^`]+)` \|$", report, re.M)
    assert {r[0] for r in rows} >= {
        "pretrained, zero-shot (task goal image)",
        "pretrained + finetuning (ξ·L_g)",
        "from scratch, same budget and seed",
    }
    import json

    for _name, rate, lo, hi, path in rows:
        ev = json.loads((out / path).read_text())
        assert float(rate) == pytest.approx(ev["success_rate"], abs=5e-4)
        assert [float(lo), float(hi)] == pytest.approx(ev["success_ci95"], abs=5e-4)
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / img).stat().st_size > 1000, img
    assert "## Stage timings" in report and "## Lake log" in report

    # summary.json: the same three figures, each read from the evaluation JSON it names
    summary = json.loads((out / "summary.json").read_text())
    by_name = {r[0]: (float(r[1]), r[4]) for r in rows}
    for key, name in (
        ("zero_shot_success", "pretrained, zero-shot (task goal image)"),
        ("finetuned_success", "pretrained + finetuning (ξ·L_g)"),
        ("scratch_success", "from scratch, same budget and seed"),
    ):
        ev = json.loads((out / summary[f"{key}_eval_json"]).read_text())
        assert summary[f"{key}_eval_json"] == by_name[name][1]
        assert (
            summary[key] == ev["success_rate"]
            and [summary[f"{key}_ci_low"], summary[f"{key}_ci_high"]] == ev["success_ci95"]
        )
    assert summary["wall_seconds"] > 0
