"""Success labels from several sources (sim, user, detectors) side by side: confidence, provenance,
annotation merges, survival through compaction and deletes, the sampler's use and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_lake import Episode, Lake
from data_lake.batch import Batch
from data_lake.lake import AnnotationError, LakeError
from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig, SamplerError, label_provenance
from data_lake.segment import SegmentData
from robot_rl.cli import main as cli

PROV = {"detector_id": "det-1a2b3c4d5e6f", "threshold": 0.5, "checkpoint": "ckpt/last.pt", "camera": "front"}


def tagged(e: int, length: int = 6, task: str = "b") -> Episode:
    """state = (episode, step): every stored row can be traced back."""
    steps = np.arange(length, dtype=np.float32)
    return Episode.make(
        images={"front": np.full((length, 8, 8, 3), e, np.uint8)},
        state=np.stack([np.full(length, e, np.float32), steps], 1),
        action=np.zeros((length, 2), np.float32),
        reward=np.zeros(length, np.float32),
        task=task,
    )


def sim(seg: SegmentData) -> np.ndarray:
    return seg.steps["state"][:, 1] == 3


def detector(seg: SegmentData) -> tuple[np.ndarray, np.ndarray]:
    """Success at even steps; confident (0.75) at even steps, unsure (0.25) at odd ones."""
    step = seg.steps["state"][:, 1]
    return step % 2 == 0, np.where(step % 2 == 0, 0.75, 0.25)


def expected(seg: SegmentData, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    step = seg.steps["state"][:, 1]
    if key == "a":
        return step == 3, None
    return step % 2 == 0, np.where(step % 2 == 0, 0.75, 0.25).astype(np.float32)


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lake = Lake.create(tmp_path / "lake")
    lake.append([tagged(e) for e in range(3)])
    lake.append([tagged(e) for e in range(3, 5)])
    return lake


def test_sources_coexist_with_their_confidence_and_provenance(lake: Lake) -> None:
    lake.label("a", sim)
    assert [d["source"] for d in lake.checkout().label_sets()] == ["sim"]  # an old-style lake: sim only
    seg = lake.checkout().read_segment(lake.checkout().segment_names()[0])
    assert list(seg.labels) == ["a"] and seg.label_confidence == {} and seg.label_attrs["a"]["source"] == "sim"
    lake.label("a", detector, source=PROV["detector_id"], provenance=PROV)
    ids = lake.checkout().episode_ids()
    lake.annotate("a", [(ids[0], 2, True), (ids[4], 5, False)])
    view = lake.checkout()
    for name in view.segment_names():
        seg = view.read_segment(name)
        assert set(seg.labels) == {"a", "a@det-1a2b3c4d5e6f", "a@user"}
        assert set(seg.label_confidence) == {"a@det-1a2b3c4d5e6f", "a@user"}  # sim: none (confidence 1)
        for key in ("a", "a@det-1a2b3c4d5e6f"):
            values, conf = expected(seg, key)
            np.testing.assert_array_equal(seg.labels[key], values)
            if conf is not None:
                np.testing.assert_array_equal(seg.label_confidence[key], conf)
        assert seg.label_attrs["a@det-1a2b3c4d5e6f"].items() >= {**PROV, "source": PROV["detector_id"]}.items()
        assert seg.label_attrs["a@user"]["source"] == "user"
        # user: the annotated steps at confidence 1, the rest unknown
        known = seg.label_confidence["a@user"] > 0
        assert seg.label_confidence["a@user"][known].tolist() == [1.0] * int(known.sum())
        assert known.sum() == 1 and seg.labels["a@user"].sum() == (1 if name == view.segment_names()[0] else 0)
    sets = {d["key"]: d for d in view.label_sets()}
    assert sets["a@det-1a2b3c4d5e6f"]["provenance"]["checkpoint"] == "ckpt/last.pt"
    assert sets["a@user"]["confidence"] and not sets["a"]["confidence"]
    assert all(len(d["segments"]) == 2 == d["of_segments"] for d in sets.values())
    commit = lake.log()[1]  # the detector's label commit
    assert commit.operation == "label" and commit.metadata["source"] == PROV["detector_id"]
    assert commit.metadata["provenance"] == PROV and commit.metadata["task"] == "a"
    # detector output is checked, naming the segment
    with pytest.raises(
        LakeError, match=r"on segment \S+ returned confidence outside \[0, 1\] at 18 steps \(step 0: 1.5\)"
    ):
        lake.label("c", lambda s: (sim(s), np.full(len(sim(s)), 1.5)), source="det-x")
    with pytest.raises(LakeError, match=r"shape \(2,\); expected \(18,\)|shape \(2,\); expected \(12,\)"):
        lake.label("c", lambda s: np.zeros(2, bool), source="det-x")
    with pytest.raises(ValueError, match=r"\[A-Za-z0-9_.-\]"):
        lake.label("c", sim, source="bad source")


def test_annotations_merge_and_bad_rows_commit_nothing(lake: Lake) -> None:
    ids = lake.checkout().episode_ids()
    lake.annotate("a", [(ids[1], 0, True), (ids[1], 1, False)])
    lake.annotate("a", [(ids[1], 1, True), (ids[1], 4, True)], message="second pass")
    assert lake.log()[0].message == "second pass" and lake.log()[0].operation == "annotate"
    seg = lake.checkout().read_segment(lake.checkout().segment_names()[0])
    lab, conf = seg.episode_labels(1)["a@user"], seg.episode_label_confidence(1)["a@user"]
    np.testing.assert_array_equal(lab, [True, True, False, False, True, False])  # step 1 relabeled True
    np.testing.assert_array_equal(conf, [1, 1, 0, 0, 1, 0])
    assert seg.episode_label_confidence(0)["a@user"].sum() == 0  # other episodes: unknown
    before = lake.resolve("main")
    with pytest.raises(AnnotationError, match=r"unknown episode nope.*episode \w+ step 6 is out of range"):
        lake.annotate("a", [(ids[0], 1, True), ("nope", 0, True), (ids[2], 6, True)])
    with pytest.raises(AnnotationError, match=r"row 1: expected \(episode_id str, step int, success bool\)"):
        lake.annotate("a", [(ids[0], 1, True), (ids[0], 2, "yes")])
    with pytest.raises(AnnotationError, match="labeled both True and False"):
        lake.annotate("a", [(ids[0], 1, True), (ids[0], 1, False)])
    assert lake.resolve("main") == before


def test_labels_survive_compaction_and_delete(lake: Lake) -> None:
    lake.label("a", sim)
    lake.label("a", detector, source="det-1", provenance=PROV)
    ids = lake.checkout().episode_ids()
    lake.annotate("a", [(ids[0], 2, True), (ids[3], 1, True)])
    lake.append([tagged(9, task="c")])  # an unlabeled segment
    lake.compact(target_steps=10**6)
    view = lake.checkout()
    assert len(view.segment_names()) == 1
    seg = view.read_segment(view.segment_names()[0])
    assert "a" not in seg.labels  # sim: kept only where every part has it (as before)
    lab, conf = seg.labels["a@det-1"], seg.label_confidence["a@det-1"]
    np.testing.assert_array_equal(lab[:30], expected(seg, "d")[0][:30])
    np.testing.assert_array_equal(conf[:30], expected(seg, "d")[1][:30])
    assert not lab[30:].any() and not conf[30:].any()  # the new episode: unknown
    assert seg.label_attrs["a@det-1"]["checkpoint"] == "ckpt/last.pt"
    user = seg.label_confidence["a@user"]
    assert np.flatnonzero(user).tolist() == [2, 19] and np.flatnonzero(seg.labels["a@user"]).tolist() == [2, 19]
    # delete one episode: the others' labels, confidences and provenance are unchanged
    lake.delete(episode_ids=[ids[0]])
    after = lake.checkout().read_segment(lake.checkout().segment_names()[0])
    for key in ("a@det-1", "a@user"):
        np.testing.assert_array_equal(after.labels[key], seg.labels[key][6:])
        np.testing.assert_array_equal(after.label_confidence[key], seg.label_confidence[key][6:])
        assert after.label_attrs[key] == seg.label_attrs[key]
    assert np.flatnonzero(after.label_confidence["a@user"]).tolist() == [13]


def test_sampler_relabels_only_confident_rows_of_its_source(lake: Lake) -> None:
    lake.append([tagged(7, task="a")])  # task "a" must be in the vocabulary
    lake.label("a", sim)
    lake.label("a", detector, source="det-1", provenance=PROV)
    rc = dict(future=0, final=0, negative=0, task=1.0, p_task=1.0)

    def batch(**kw: object) -> tuple[Sampler, Batch]:
        relabel = RelabelConfig(**rc, **kw)  # type: ignore[arg-type]
        cfg = SamplerConfig(batch_size=256, relabel=relabel, augment_pad=0, seed=1)
        s = Sampler(lake.checkout(), cfg, progress=False)
        return s, s.sample_host()

    s, b = batch(label_source="det-1", min_label_confidence=0.5)
    st, task = b.observations.state.numpy(), b.task_ids.numpy()
    a, own = s.tasks.index("a"), np.array([s.tasks.index("a" if e == 7 else "b") for e in st[:, 0]])
    confident = (st[:, 1] + 1) % 2 == 0  # the label of the reward step t + 1 has confidence 0.75
    assert confident.any() and (~confident & (own != a)).any()
    np.testing.assert_array_equal(task, np.where(confident, a, own))
    np.testing.assert_array_equal(b.rewards.numpy(), confident)  # relabeled: the detector's success; else 0
    np.testing.assert_array_equal(b.terminals.numpy(), confident)
    # min_label_confidence 0: every row relabeled
    _, b0 = batch(label_source="det-1")
    assert (b0.task_ids.numpy() == a).all()
    used = label_provenance(lake.checkout(), RelabelConfig(**rc, label_source="det-1"))  # type: ignore[arg-type]
    assert used is not None and used["sets"][0]["provenance"]["threshold"] == 0.5
    assert label_provenance(lake.checkout(), RelabelConfig()) is None  # no p_task: no labels used
    with pytest.raises(SamplerError, match=r"source 'user'; the sampled data has label sources \['det-1', 'sim'\]"):
        batch(label_source="user")
    with pytest.raises(SamplerError, match="min_label_confidence"):
        RelabelConfig(min_label_confidence=1.5)


def test_cli_annotate_csv_json_and_errors(lake: Lake, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids, uri = lake.checkout().episode_ids(), str(lake.location.path)
    csv = tmp_path / "a.csv"
    csv.write_text(f"episode,step,success\n{ids[0]},1,true\n{ids[0]},2,0\n")
    assert cli(["lake", "annotate", "--lake", uri, "--task", "a", str(csv)]) == 0
    assert "annotated a (source user): 2 steps (1 success) of 1 episodes" in capsys.readouterr().out
    js = tmp_path / "a.json"
    js.write_text(json.dumps([{"episode": ids[4], "step": 5, "success": True}]))
    assert cli(["lake", "annotate", "--lake", uri, "--task", "a", "--source", "alice", str(js)]) == 0
    seg = lake.checkout().read_segment(lake.checkout().segment_names()[0])
    assert np.flatnonzero(seg.label_confidence["a@user"]).tolist() == [1, 2]
    assert np.flatnonzero(seg.labels["a@user"]).tolist() == [1]
    assert cli(["lake", "labels", "--lake", uri]) == 0
    out = capsys.readouterr().out
    assert "alice" in out and "user" in out and "1/2 segments" in out
    before = lake.resolve("main")
    csv.write_text(f"episode,step,success\n{ids[0]},1,true\n{ids[0]},two,true\n")
    assert cli(["lake", "annotate", "--lake", uri, "--task", "a", str(csv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "line 3: field step" in err[0] and str(csv) in err[0]
    csv.write_text(f"episode,step,success\n{ids[0]},1,maybe\n")
    assert cli(["lake", "annotate", "--lake", uri, "--task", "a", str(csv)]) == 2
    assert "line 2: field success: expected true/false" in capsys.readouterr().err
    assert lake.resolve("main") == before
