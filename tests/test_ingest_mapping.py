"""The mapping file: every example in configs/ingest parses, and each invalid mapping is refused
with an error naming the file, the key and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from data_lake.ingest import FORMATS, MappingError, load_mapping
from data_lake.ingest.mapping import Mapping

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "ingest"
MINIMAL: dict[str, Any] = {"format": "mcap", "rate_hz": 10, "state": ["/js"], "action": ["/cmd"]}


def test_every_format_has_an_example_that_parses() -> None:
    found = {p.stem: load_mapping(p) for p in sorted(CONFIGS.glob("*.yaml"))}
    assert set(found) == set(FORMATS)
    for name, m in found.items():
        assert m.format == name and m.rate_hz > 0 and m.state and m.action
        assert len(m.sha256) == 64 and m.path.endswith(f"{name}.yaml")
    mc = found["mcap"]
    assert mc.state[0].joints is not None and len(mc.state[0].joints) == 7
    assert mc.episodes.split == "marker" and mc.episodes.marker is not None
    assert mc.sync.time == "header" and mc.terminal.constant == "success"
    assert found["robomimic"].filter_key == "train" and found["aloha"].resize == "pad"


def test_defaults_and_shorthands() -> None:
    m = Mapping.from_dict({**MINIMAL, "cameras": {"front": "/cam"}, "reward": "/r", "task": "pick"})
    assert m.cameras["front"].name == "/cam" and m.reward.source is not None and m.reward.source.name == "/r"
    assert m.task.constant == "pick" and m.language.constant is None and m.success.constant is None
    assert (m.resize, m.episodes.split, m.sync.on_gap, m.sync.on_backwards) == ("crop", "file", "split", "reject")
    assert m.names() == {"/js", "/cmd", "/cam", "/r"}
    assert Mapping.from_dict(dict(MINIMAL)).sha256 == Mapping.from_dict(dict(MINIMAL)).sha256


@pytest.mark.parametrize(
    ("change", "where", "words"),
    [
        ({"camera": {}}, "(top level)", "unknown key(s) ['camera']"),
        ({"format": "bag"}, "format", "must be one of"),
        ({"rate_hz": 0}, "rate_hz", "positive number"),
        ({"state": []}, "state", "at least one source"),
        ({"state": [{"topic": "/a", "key": "b"}]}, "state[0]", "exactly one of 'topic' or 'key'"),
        ({"state": [{"topic": "/a", "feild": "x"}]}, "state[0]", "unknown key(s) ['feild']"),
        ({"action": [{"topic": "/a", "indices": [-1]}]}, "action[0]", "non-negative integers"),
        ({"action": [{"topic": "/a", "indices": []}]}, "action[0]", "non-empty list"),
        ({"cameras": {"a/b": "/cam"}}, "cameras", "without '/'"),
        ({"cameras": {"front": {"topic": "/c", "channels": "rbg"}}}, "cameras.front", "rgb or bgr"),
        ({"resize": "fill"}, "resize", "crop"),
        ({"image_size": [64]}, "image_size", "[height, width]"),
        ({"reward": True}, "reward", "found True"),
        ({"success": {"topic": "/s", "reduce": "most"}}, "success", "'reduce' must be one of"),
        ({"episodes": {"split": "marker"}}, "episodes", "needs 'marker"),
        ({"episodes": {"min_steps": 1}}, "episodes", ">= 2"),
        ({"sync": {"time": "wall"}}, "sync.time", "['log', 'header']"),
        ({"sync": {"on_backwards": "sort"}}, "sync.on_backwards", "reject or drop"),
        ({"on_truncated": "ignore"}, "on_truncated", "recover or reject"),
    ],
)
def test_invalid_mappings_name_the_key(tmp_path: Path, change: dict[str, Any], where: str, words: str) -> None:
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, **change}))
    with pytest.raises(MappingError) as exc:
        load_mapping(path)
    note = exc.value.note
    assert note.code == "mapping" and note.source == str(path) and note.where == where
    assert words in note.details


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="no mapping file"):
        load_mapping(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("state: [unclosed")
    with pytest.raises(MappingError, match="not valid YAML"):
        load_mapping(bad)
    bad.write_text("- a list\n")
    with pytest.raises(MappingError, match="a YAML mapping at the top"):
        load_mapping(bad)
    bad.write_text("rate_hz: 10\nstate: [/a]\n")
    with pytest.raises(MappingError, match="required key 'action'"):
        load_mapping(bad)
