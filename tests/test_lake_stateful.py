"""The lake against an in-memory model, driven by hypothesis' stateful testing.

The model is what the lake promises: each branch is an ordered list of episodes (lake order is
append order; a delete removes, a compaction changes nothing), each tag a frozen list, and an
episode already on a branch is skipped. After every step every branch and tag of a real local
Icechunk lake must list exactly the model's episode ids, in order.
"""

from __future__ import annotations

import functools
import itertools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

from data_lake import Episode, Lake, LakeError, LakeView
from data_lake.synthetic import synthetic_episode

SEEDS = range(10)  # a small pool, so the same episode is appended again and again
TASKS = ("tabletop/push", "tabletop/lift")
TARGETS = (6, 10, 16, 10**6)  # compaction targets, in steps (episodes have 3 to 5)
MAX_REFS = 4  # branches and tags each: more would spread the appends thin


@functools.cache
def episode(seed: int) -> Episode:
    """The episode of a seed: task and length follow from it, so a seed always has one id."""
    return synthetic_episode(seed, length=3 + seed % 3, size=8, task=TASKS[seed % 2])


def segment_steps(view: LakeView) -> list[int]:
    """Steps per segment, in lake order (from the public episode table)."""
    steps: dict[str, int] = {}
    for r in view.episodes():
        steps[r.segment] = steps.get(r.segment, 0) + r.length
    return [steps[n] for n in view.segment_names() if n in steps]


class LakeMachine(RuleBasedStateMachine):
    branches = Bundle("branches")
    tags = Bundle("tags")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="lake-stateful-"))
        self.lake = Lake.create(self.dir / "lake")
        self.model: dict[str, list[int]] = {}  # branch -> seeds in lake order
        self.frozen: dict[str, tuple[int, ...]] = {}  # tag -> seeds
        self.counter = 0

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _new_name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def _ids(self, seeds: list[int] | tuple[int, ...]) -> list[str]:
        return [episode(s).episode_id for s in seeds]

    # ------------------------------------------------------------ rules
    @initialize(target=branches)
    def main(self) -> str:
        self.model["main"] = []
        return "main"

    @rule(
        branch=branches,
        seeds=st.lists(st.sampled_from(SEEDS), min_size=1, max_size=4),
        per_segment=st.sampled_from([4, 20_000]),
    )
    def append(self, branch: str, seeds: list[int], per_segment: int) -> None:
        res = self.lake.append([episode(s) for s in seeds], branch=branch, segment_steps=per_segment)
        new = []
        for s in seeds:
            if s not in self.model[branch] and s not in new:
                new.append(s)
        self.model[branch] += new
        assert (res.added, res.skipped_duplicates) == (len(new), len(seeds) - len(new))
        assert (res.snapshot_id is None) == (not new)
        if new:
            assert self.lake.resolve(branch) == res.snapshot_id

    @rule(branch=branches, seed=st.sampled_from(SEEDS))
    def append_one(self, branch: str, seed: int) -> None:
        """One episode per commit, the common case (and more appends than other rules)."""
        self.append(branch, [seed], 20_000)

    @precondition(lambda self: len(self.frozen) < MAX_REFS)
    @rule(target=tags, branch=branches)
    def tag(self, branch: str) -> str:
        name = self._new_name("t")
        snap = self.lake.tag(name, f"branch:{branch}")
        assert snap == self.lake.resolve(branch)
        self.frozen[name] = tuple(self.model[branch])
        return name

    @precondition(lambda self: len(self.model) < MAX_REFS)
    @rule(target=branches, src=st.one_of(branches, tags))
    def branch(self, src: str) -> str:
        name = self._new_name("b")
        self.lake.branch(name, src)
        self.model[name] = list(self.model[src] if src in self.model else self.frozen[src])
        return name

    @rule(ref=st.one_of(branches, tags), data=st.data())
    def checkout(self, ref: str, data: st.DataObject) -> None:
        want = list(self.model[ref] if ref in self.model else self.frozen[ref])
        view = self.lake.checkout(ref)
        recs = view.episodes()
        assert [(r.episode_id, r.task, r.length) for r in recs] == [
            (episode(s).episode_id, episode(s).task, len(episode(s))) for s in want
        ]
        for task in TASKS:
            assert [r.episode_id for r in view.episodes(task=task)] == self._ids(
                [s for s in want if s % 2 == TASKS.index(task)]
            )
        if want:
            s = data.draw(st.sampled_from(want), label="read back")
            back = view.read_episode(episode(s).episode_id)
            assert back.episode_id == episode(s).episode_id
            for k, v in episode(s).steps.items():
                np.testing.assert_array_equal(back.steps[k], v, err_msg=k)

    @rule(branch=branches, data=st.data())
    def delete(self, branch: str, data: st.DataObject) -> None:
        on_branch = self.model[branch]
        absent = [s for s in SEEDS if s not in on_branch]
        ways = ["task"] + ["ids"] * bool(on_branch) + ["absent"] * bool(absent)
        how = data.draw(st.sampled_from(ways), label="how")
        before = self.lake.resolve(branch)
        if how == "ids":
            doomed = data.draw(st.lists(st.sampled_from(on_branch), min_size=1, max_size=3, unique=True), label="ids")
            res = self.lake.delete(episode_ids=self._ids(doomed), branch=branch)
        elif how == "task":
            task = data.draw(st.sampled_from(TASKS), label="task")
            doomed = [s for s in on_branch if episode(s).task == task]
            if not doomed:
                with pytest.raises(LakeError, match="no episodes of task"):
                    self.lake.delete(task=task, branch=branch)
                assert self.lake.resolve(branch) == before  # nothing committed
                return
            res = self.lake.delete(task=task, branch=branch)
        else:
            seed = data.draw(st.sampled_from(absent), label="absent")
            with pytest.raises(KeyError, match="not on branch"):
                self.lake.delete(episode_ids=[episode(seed).episode_id, *self._ids(on_branch[:1])], branch=branch)
            assert self.lake.resolve(branch) == before  # nothing committed, not even the id that was there
            return
        assert res.removed == len(doomed) and res.snapshot_id == self.lake.resolve(branch) != before
        self.model[branch] = [s for s in on_branch if s not in doomed]

    @rule(branch=branches, target_steps=st.sampled_from(TARGETS))
    def compact(self, branch: str, target_steps: int) -> None:
        before = segment_steps(self.lake.checkout(branch))
        res = self.lake.compact(branch=branch, target_steps=target_steps)
        after = segment_steps(self.lake.checkout(branch))
        assert sum(after) == sum(before)
        if res.snapshot_id is None:
            assert after == before
        else:
            assert (res.segments_before, res.segments_after) == (len(before), len(after))
            assert len(after) < len(before)
        # nothing left to merge: no two neighbouring segments fit in one target
        assert all(a + b > target_steps for a, b in itertools.pairwise(after))

    @rule(ref=st.one_of(branches, tags))
    def verify(self, ref: str) -> None:
        rep = self.lake.verify(ref)
        want = self.model[ref] if ref in self.model else self.frozen[ref]
        assert rep.ok, rep.problems
        assert rep.episodes_checked == len(want)

    # ------------------------------------------------------------ invariants
    @invariant()
    def every_ref_matches_the_model(self) -> None:
        assert self.lake.branches() == sorted(self.model)
        assert self.lake.tags() == sorted(self.frozen)
        for ref, seeds in [*self.model.items(), *self.frozen.items()]:
            assert self.lake.checkout(ref).episode_ids() == self._ids(seeds), ref
        for b, seeds in self.model.items():
            assert self.lake.log(b, limit=1)[0].episodes_total == len(seeds), b


LakeMachine.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_lake_matches_model = LakeMachine.TestCase
