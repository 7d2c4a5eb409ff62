"""Crash safety: a writer killed with SIGKILL at any moment leaves a lake that opens, verifies and
takes new commits, holding exactly the batches that were committed (a commit is all or nothing).

Each trial starts a child process that appends batches to one local lake in a loop, printing a
line before each batch, when its commit phase starts (it wraps ``data_lake.lake.commit_lock`` in a
function that prints, then takes the real lock) and after each commit, with the snapshot id. The
test kills it with SIGKILL at a seeded random moment: a random time after start, a short random
time after a commit (while the next batch is written or committed) or just after a commit phase
started (while Icechunk writes the snapshot and moves the branch). The lake is shared by all
trials, so later trials also check that a lake which survived many kills keeps working.
"""

from __future__ import annotations

import itertools
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from data_lake import Lake
from data_lake.storage import commit_lock
from data_lake.synthetic import synthetic_episode

TRIALS = 20
BATCH = 3  # episodes per commit
LENGTH, SIZE = 20, 32
SEEDS_PER_TRIAL = 10_000  # trial t's child uses seeds t * 10_000 + ..., the parent t * 10_000 + 9_000 + ...
MAX_BATCHES = 200  # a child the parent failed to kill stops by itself
WAIT_S = 120.0  # for any one line from the child; generous for a loaded machine

CHILD = """
import sys

import data_lake.lake as lake_module
from data_lake import Lake
from data_lake.synthetic import synthetic_episode

real_lock = lake_module.commit_lock


def announced_lock(loc, *args, **kwargs):
    print("at-lock", flush=True)  # the commit phase starts: rebase, dedup check, commit
    return real_lock(loc, *args, **kwargs)


lake_module.commit_lock = announced_lock
path, first, batch, length, size, max_batches = sys.argv[1], *map(int, sys.argv[2:])
lake = Lake.open(path)
print("ready", flush=True)
for i in range(max_batches):
    print("writing", i, flush=True)
    seeds = range(first + i * batch, first + (i + 1) * batch)
    res = lake.append([synthetic_episode(s, length=length, size=size) for s in seeds])
    print("committed", i, res.snapshot_id, flush=True)
"""


def batch(first: int, i: int) -> list[str]:
    """Episode ids of batch ``i`` of a writer starting at seed ``first``."""
    return [
        synthetic_episode(s, length=LENGTH, size=SIZE).episode_id
        for s in range(first + i * BATCH, first + (i + 1) * BATCH)
    ]


class Child:
    """The writer process, with its stdout read line by line on a thread."""

    def __init__(self, script: Path, lake: Path, first: int, stderr: Path):
        args = [str(lake), str(first), str(BATCH), str(LENGTH), str(SIZE), str(MAX_BATCHES)]
        self.stderr = stderr
        with stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=err, text=True
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_for(self, prefix: str, count: int = 1) -> None:
        """Block until the child has printed ``count`` lines starting with ``prefix``."""
        while sum(s.startswith(prefix) for s in self.seen) < count:
            line = self.lines.get(timeout=WAIT_S)
            if line is None:
                rc = self.proc.wait()
                raise AssertionError(f"the child exited early (rc {rc}): {self.seen}\n{self.stderr.read_text()}")
            self.seen.append(line)

    def kill(self) -> list[str]:
        """SIGKILL the child and return every line it printed."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        self.reader.join(timeout=60)
        while (line := self.lines.get_nowait()) is not None:
            self.seen.append(line)
        assert self.proc.returncode == -signal.SIGKILL, (self.proc.returncode, self.stderr.read_text())
        return self.seen

    def stop(self) -> None:
        """Kill the child if it still runs (when a check failed before the planned kill)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)


@pytest.mark.timeout(600)
def test_sigkilled_writer_leaves_whole_commits_and_a_working_lake(tmp_path: Path) -> None:
    rng = random.Random(20240601)
    script = tmp_path / "writer.py"
    script.write_text(CHILD)
    path = tmp_path / "lake"
    Lake.create(path)
    ids: list[str] = []  # the lake's content after each trial, as the test expects it
    appends = 0  # append commits in the log
    in_append = 0  # trials killed between "writing i" and "committed i", inside Lake.append
    for trial in range(TRIALS):
        first = trial * SEEDS_PER_TRIAL
        child = Child(script, path, first, tmp_path / f"stderr-{trial}.txt")
        try:
            child.wait_for("ready")
            how = rng.random()
            if how < 0.25:  # anywhere: while writing the first batches or between commits
                time.sleep(rng.uniform(0.0, 0.6))
            elif how < 0.65:  # after a commit: while the next batch is being written or committed
                child.wait_for("committed", rng.randint(1, 3))
                time.sleep(rng.uniform(0.0, 0.25))
            else:  # in a commit phase (about 15 ms here): rebasing, writing the snapshot, moving the branch
                child.wait_for("at-lock", rng.randint(1, 3))
                time.sleep(rng.uniform(0.0, 0.02))
            lines = child.kill()
        finally:
            child.stop()
        reported = [line.split() for line in lines if line.startswith("committed")]
        assert [int(r[1]) for r in reported] == list(range(len(reported)))

        lake = Lake.open(path)
        now = lake.checkout().episode_ids()
        assert now[: len(ids)] == ids, f"trial {trial}: earlier episodes changed"
        new = now[len(ids) :]
        assert len(new) % BATCH == 0, f"trial {trial}: {len(new)} new episodes, not whole batches of {BATCH}"
        committed = len(new) // BATCH
        # every reported commit is durable; at most one more landed before the kill
        assert len(reported) <= committed <= len(reported) + 1, (trial, len(reported), committed)
        assert new == [e for i in range(committed) for e in batch(first, i)]
        in_append += lines[-1].startswith(("writing", "at-lock"))
        ids, appends = now, appends + committed

        log = lake.log()
        assert {r[2] for r in reported} <= {c.snapshot_id for c in log}
        assert log[0].episodes_total == len(ids)
        assert sum(c.operation == "append" for c in log) == appends
        for c, parent in itertools.pairwise(log):
            assert c.parent_id == parent.snapshot_id
            assert c.episodes_total == parent.episodes_total + c.episodes_added - c.episodes_removed
        report = lake.verify()
        assert report.ok, report.problems
        assert report.episodes_checked == len(ids)

        # the dead writer's commit lock is free, and the lake takes a new commit
        with commit_lock(lake.location, timeout_s=30):
            pass
        mine = first + 9_000
        res = lake.append([synthetic_episode(s, length=LENGTH, size=SIZE) for s in range(mine, mine + BATCH)])
        assert res.added == BATCH and lake.resolve("main") == res.snapshot_id
        ids, appends = ids + batch(mine, 0), appends + 1
        assert lake.checkout().episode_ids() == ids
    # the kills did land inside appends (writing or committing), not only between them
    assert in_append >= TRIALS // 2, in_append
