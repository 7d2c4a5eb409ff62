"""Success labels from stored simulator states (MT-Opt's data sharing) on real collected episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_lake import Lake
from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig
from robot_rl.cli import main as cli
from tasks.collect import CollectConfig, collect
from tasks.label import LabelError, detector_over_states

PUSH, REACH = "tabletop/push_red_to_pad", "tabletop/reach_red"


@pytest.fixture(scope="module")
def lake_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("label") / "lake"
    for task in (PUSH, REACH):
        collect(CollectConfig(task=task, episodes=2, lake=str(path), cameras=("front",), progress=False))
    return path


def test_labels_reproduce_the_collecting_tasks_own_rewards(lake_path: Path) -> None:
    assert cli(["lake", "label", "--lake", str(lake_path), "--task", PUSH]) == 0
    view = Lake.open(lake_path).checkout()
    assert view.snapshot_id == Lake.open(lake_path).resolve("main")
    for name in view.segment_names():
        seg = view.read_segment(name)
        lab = seg.labels[PUSH]
        if seg.table["task"][0] == PUSH:
            # reward r_t is success after action t, i.e. the label of step t + 1
            ends = seg.episode_ends
            starts = np.concatenate([[0], ends[:-1]])
            for s, e in zip(starts, ends, strict=True):
                np.testing.assert_array_equal(lab[s + 1 : e], seg.steps["reward"][s : e - 1] > 0)
        else:
            assert lab.dtype == bool and len(lab) == len(seg.steps["action"])
    # labelling again is a no-op without --overwrite
    assert Lake.open(lake_path).label(PUSH, detector_over_states(PUSH)).snapshot_id is None


def test_sampler_shares_data_across_tasks_with_labels(lake_path: Path) -> None:
    Lake.open(lake_path).label(PUSH, detector_over_states(PUSH))
    rc = RelabelConfig(future=0, final=0, negative=0, task=1.0, p_task=1.0)
    s = Sampler(
        Lake.open(lake_path).checkout(), SamplerConfig(batch_size=64, relabel=rc, augment_pad=0), progress=False
    )
    b = s.sample_host()
    assert (b.task_ids.numpy() == s.tasks.index(PUSH)).all()  # every row relabelled to the labelled task
    assert set(np.unique(b.rewards.numpy())) <= {0.0, 1.0} and (b.terminals == b.rewards).all()


def test_unlabelable_tasks_are_refused(lake_path: Path) -> None:
    with pytest.raises(LabelError, match="random goal per episode"):
        detector_over_states("tabletop/move_green_to_goal")
    with pytest.raises(LabelError, match="not part of the stored simulator state"):
        detector_over_states("pointmaze/umaze")
