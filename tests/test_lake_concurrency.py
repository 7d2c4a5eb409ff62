"""Concurrent writers on one local lake: separate processes, each opening the lake itself.

- Four writers appending different episodes at once lose nothing: every commit is in the log and
  every episode in the lake, while a reader pinned to a tag keeps reading the same bytes.
- Writers appending the same episodes at once store each episode once.
- Two first appends into an empty lake (both fixing the schema) conflict; one retries.

The races that need both writers to have written before either commits are forced, not hoped
for: the test holds the lake's commit lock while the writers start, and releases it once both are
waiting for it. Writers announce that they are waiting by wrapping ``data_lake.lake.commit_lock``
in a function that prints a line and then takes the real lock.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_lake import Episode, Lake, LakeView
from data_lake.storage import commit_lock
from data_lake.synthetic import synthetic_episode

LENGTH, SIZE = 6, 16
TASKS = ("tabletop/push", "tabletop/lift")
WAIT_S = 180.0  # for any one line from a writer; generous for a loaded 2-core machine
DuplicateRace = tuple[Lake, list[dict[str, Any]]]  # the lake after the race, both writers' results

WRITER = """
import json, os, sys, time
from pathlib import Path

import data_lake.lake as lake_module
from data_lake import Lake
from data_lake.synthetic import synthetic_episode

cfg = json.loads(sys.argv[1])
real_lock = lake_module.commit_lock


def announced_lock(loc, *args, **kwargs):
    print("at-lock", flush=True)  # about to wait for the real commit lock
    return real_lock(loc, *args, **kwargs)


lake_module.commit_lock = announced_lock
lake = Lake.open(cfg["lake"])
tasks = cfg["tasks"]
eps = [synthetic_episode(s, length=cfg["length"], size=cfg["size"], task=tasks[s % len(tasks)]) for s in cfg["seeds"]]
print("ready", flush=True)
go = Path(cfg["go"])
while not go.exists():
    time.sleep(0.005)
for i in range(0, len(eps), cfg["per_commit"]):
    try:
        r = lake.append(eps[i : i + cfg["per_commit"]])
        out = {"added": r.added, "skipped": r.skipped_duplicates, "snapshot": r.snapshot_id}
    except Exception as e:
        out = {"error": type(e).__name__, "message": str(e)}
    print("result", json.dumps(out), flush=True)
print("done", flush=True)
# Skip interpreter finalization: Icechunk's tokio threads can abort the process (SIGABRT) when it
# exits right after a lake read; the exit code is not what these tests check.
os._exit(0)
"""


def episode(seed: int, size: int = SIZE) -> Episode:
    return synthetic_episode(seed, length=LENGTH, size=size, task=TASKS[seed % len(TASKS)])


def checksum(view: LakeView) -> str:
    """sha256 over every array byte (and id) of every episode of a snapshot, in lake order."""
    h = hashlib.sha256()
    for ep in view.iter_episodes():
        h.update(ep.episode_id.encode())
        for key, a in sorted(ep.arrays().items()):
            h.update(key.encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class Writer:
    """One writer process; its stdout is read line by line on a thread."""

    def __init__(self, tmp: Path, name: str, lake: Path, seeds: list[int], per_commit: int, size: int = SIZE):
        script = tmp / "writer.py"
        if not script.exists():
            script.write_text(WRITER)
        self.go = tmp / "go"
        cfg = {
            "lake": str(lake),
            "seeds": seeds,
            "per_commit": per_commit,
            "length": LENGTH,
            "size": size,
            "tasks": list(TASKS),
            "go": str(self.go),
        }
        self.stderr = tmp / f"{name}.stderr"
        with self.stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), json.dumps(cfg)], stdout=subprocess.PIPE, stderr=err, text=True
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_for(self, line: str, count: int = 1) -> None:
        while self.seen.count(line) < count:
            got = self.lines.get(timeout=WAIT_S)
            if got is None:
                raise AssertionError(f"writer exited (rc {self.proc.wait()}): {self.seen}\n{self.stderr.read_text()}")
            self.seen.append(got)

    def finish(self) -> list[dict[str, Any]]:
        """Wait for the writer to exit; return its append results, in order."""
        self.wait_for("done")
        assert self.proc.wait(timeout=WAIT_S) == 0, self.stderr.read_text()
        return [json.loads(s.split(" ", 1)[1]) for s in self.seen if s.startswith("result ")]


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    """Collects the test's writers and kills any still running when the test ends."""
    made: list[Writer] = []
    yield made
    for w in made:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(timeout=30)


def start_together(ws: list[Writer]) -> None:
    for w in ws:
        w.wait_for("ready")
    ws[0].go.touch()


# ---------------------------------------------------------------------------- many writers
@pytest.mark.timeout(600)
def test_four_writers_lose_nothing_and_a_pinned_reader_sees_the_same_bytes(
    tmp_path: Path, writers: list[Writer]
) -> None:
    path = tmp_path / "lake"
    lake = Lake.create(path)
    lake.branch("frozen")
    lake.append([episode(s) for s in range(900, 908)], branch="frozen")
    lake.tag("v1", "branch:frozen")
    pinned = lake.checkout("v1")
    expected = checksum(pinned)

    seeds = {w: [100 * w + j for j in range(10)] for w in range(4)}
    writers += [Writer(tmp_path, f"w{w}", path, seeds[w], per_commit=2) for w in range(4)]
    start_together(writers)  # all four start on an empty main: they also race to fix its schema
    sums = []
    deadline = time.monotonic() + WAIT_S  # a guard against a hung writer, not a speed check
    while any(w.proc.poll() is None for w in writers) or len(sums) < 3:
        assert time.monotonic() < deadline, [w.seen for w in writers]
        sums.append(checksum(pinned))  # the view taken before the writers started
        sums.append(checksum(Lake.open(path).checkout("v1")))  # the tag resolved afresh
    results = [w.finish() for w in writers]

    assert sums == [expected] * len(sums)
    for rs in results:
        assert rs == [{"added": 2, "skipped": 0, "snapshot": r["snapshot"]} for r in rs] and len(rs) == 5
    lake = Lake.open(path)
    view = lake.checkout("main")
    ids = view.episode_ids()
    assert len(ids) == 40
    for w in range(4):  # each writer's episodes are all there, in the order it appended them
        mine = [episode(s).episode_id for s in seeds[w]]
        assert [i for i in ids if i in set(mine)] == mine
    log = lake.log("main")
    appends = [c for c in log if c.operation == "append"]
    assert len(appends) == 20 and sum(c.episodes_added for c in appends) == 40
    assert {r["snapshot"] for rs in results for r in rs} == {c.snapshot_id for c in appends}
    for c, parent in itertools.pairwise(log):  # one chain, no commit lost or overwritten
        assert c.parent_id == parent.snapshot_id
        assert c.episodes_total == parent.episodes_total + c.episodes_added
    assert log[0].episodes_total == 40
    report = lake.verify("main")
    assert report.ok and report.episodes_checked == 40, report.problems
    assert checksum(lake.checkout("v1")) == expected


# ---------------------------------------------------------------------------- forced races
def race(tmp_path: Path, writers: list[Writer], lake: Lake, batches: list[list[int]], sizes: list[int]) -> None:
    """Start one writer per batch; let them commit only after all have written and wait to commit."""
    with commit_lock(lake.location, timeout_s=WAIT_S):
        writers += [
            Writer(tmp_path, f"w{i}", Path(lake.location.path), b, per_commit=len(b), size=s)
            for i, (b, s) in enumerate(zip(batches, sizes, strict=True))
        ]
        start_together(writers)
        for w in writers:
            w.wait_for("at-lock")


@pytest.fixture(scope="module")
def duplicate_race(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DuplicateRace]:
    """Two writers append the same five episodes, one of them already in the lake, at once.

    Run once for the tests below; returns the lake and both writers' append results.
    """
    tmp = tmp_path_factory.mktemp("duplicates")
    lake = Lake.create(tmp / "lake")
    lake.append([episode(0)])
    ws: list[Writer] = []
    try:
        race(tmp, ws, lake, [[0, 1, 2, 3, 4]] * 2, [SIZE, SIZE])
        results = [r for w in ws for r in w.finish()]
    finally:
        for w in ws:
            if w.proc.poll() is None:
                w.proc.kill()
    yield Lake.open(tmp / "lake"), results


def test_same_episodes_appended_concurrently_are_stored_once(duplicate_race: DuplicateRace) -> None:
    lake, results = duplicate_race
    assert all("error" not in r for r in results), results
    assert sorted(r["added"] for r in results) == [0, 4]  # the second writer found all of them there
    ids = lake.checkout().episode_ids()
    assert ids == [episode(s).episode_id for s in range(5)]
    report = lake.verify()
    assert report.ok and report.episodes_checked == 5, report.problems


def test_raced_duplicates_are_counted_once(duplicate_race: DuplicateRace) -> None:
    """Each writer offered 5 episodes: added + skipped_duplicates must be 5 for both."""
    _, results = duplicate_race
    assert [r["added"] + r["skipped"] for r in results] == [5, 5], results


def test_raced_append_of_only_duplicates_makes_no_commit(duplicate_race: DuplicateRace) -> None:
    """Like an append of episodes already on the branch, it is a no-op: no snapshot, no log entry."""
    lake, results = duplicate_race
    loser = next(r for r in results if r["added"] == 0)
    appends = [c for c in lake.log() if c.operation == "append"]
    assert [c.episodes_added for c in appends] == [4, 1], [(c.message, c.metadata) for c in appends]
    assert loser["snapshot"] is None


def test_two_first_appends_into_an_empty_lake_both_succeed(tmp_path: Path, writers: list[Writer]) -> None:
    lake = Lake.create(tmp_path / "lake")
    race(tmp_path, writers, lake, [[1, 2], [3, 4, 5]], [SIZE, SIZE])
    results = [w.finish() for w in writers]
    assert [[r["added"] for r in rs] for rs in results] == [[2], [3]], results
    # both fixed the schema, so the second to commit conflicted, and retried from the new tip
    assert sum(w.seen.count("at-lock") for w in writers) == 3
    lake = Lake.open(tmp_path / "lake")
    assert sorted(lake.checkout().episode_ids()) == sorted(episode(s).episode_id for s in [1, 2, 3, 4, 5])
    assert lake.checkout().schema["step"]["images/front"]["shape"] == [SIZE, SIZE, 3]
    assert [c.operation for c in lake.log()][:2] == ["append", "append"]
    assert lake.verify().ok


def test_two_first_appends_with_different_schemas_one_wins(tmp_path: Path, writers: list[Writer]) -> None:
    lake = Lake.create(tmp_path / "lake")
    race(tmp_path, writers, lake, [[1, 2], [3, 4]], [SIZE, 2 * SIZE])
    (a,), (b,) = (w.finish() for w in writers)
    winner, loser = (a, b) if "added" in a else (b, a)
    assert winner["added"] == 2 and loser["error"] == "EpisodeValidationError", (a, b)
    assert "images/front" in loser["message"] and "lake stores" in loser["message"]
    lake = Lake.open(tmp_path / "lake")
    view = lake.checkout()
    side = SIZE if winner is a else 2 * SIZE
    assert view.schema["step"]["images/front"]["shape"] == [side, side, 3]
    assert len(view) == 2 and lake.verify().ok
