"""The lake under real faults: a crash while creating it, a read-only file system, a full disk,
and a power loss between a commit's files and its branch moving.

Crashes are real SIGKILLs of a child process at a chosen point (the child wraps one library call
so it kills itself right after it). Read-only and full file systems are real mounts (a read-only
bind mount, a 3 MB tmpfs) in a user namespace (``unshare -rm``), so they need no privileges.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import icechunk as ic
import pytest

from data_lake import Lake, NotALakeError
from data_lake.lake import STAGING_PREFIX
from data_lake.synthetic import synthetic_episode
from robot_rl.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def _child(code: str, *args: str, unshare: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", textwrap.dedent(code), *args]
    if unshare:
        cmd = ["unshare", "-rm", *cmd]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


KILL_AFTER_REPO_CREATE = """
import os, signal, sys
import icechunk as ic
real = ic.Repository.create

def create_then_die(*args, **kwargs):
    repo = real(*args, **kwargs)  # Icechunk has written the repository and refs/branch.main
    os.kill(os.getpid(), signal.SIGKILL)

ic.Repository.create = create_then_die
from robot_rl.cli import main
main(sys.argv[1:])
"""


# ---------------------------------------------------------------------------- creation
def test_a_kill_while_creating_leaves_no_half_lake_and_init_works(tmp_path: Path, capsys) -> None:
    path = tmp_path / "lake"
    r = _child(KILL_AFTER_REPO_CREATE, "lake", "init", str(path))
    assert r.returncode == -9, r.stderr
    assert not path.exists() or not any(path.iterdir())  # no lake, not half of one
    leftovers = list(tmp_path.glob(".lake.creating-*"))
    assert len(leftovers) == 1  # the hidden build directory of the killed process
    assert cli(["lake", "info", "--lake", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no lake at" in err and "Traceback" not in err
    assert cli(["lake", "init", str(path)]) == 0
    assert not list(tmp_path.glob(".lake.creating-*"))  # removed: its process is gone
    lake = Lake.open(path)
    lake.append([synthetic_episode(0, length=10, size=16)])
    assert len(lake.checkout()) == 1 and lake.verify().ok


def test_a_kill_while_collect_creates_its_lake_then_collect_recovers(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    args = ["collect", "task=tabletop/reach_red", "episodes=1", f"lake={uri}", "workers=1", "progress=false"]
    r = _child(KILL_AFTER_REPO_CREATE, *args)
    assert r.returncode == -9, r.stderr
    r = _child("import sys; from robot_rl.cli import main; sys.exit(main(sys.argv[1:]))", *args)
    assert r.returncode == 0, r.stderr
    assert len(Lake.open(uri).checkout()) == 1


def test_a_half_created_repository_is_recognised_and_finished(tmp_path: Path, capsys) -> None:
    """What a crash left before creation became atomic (and can still happen on object storage):
    an Icechunk repository without the lake's first commit."""
    for name in ("a", "b"):
        ic.Repository.create(ic.local_filesystem_storage(str(tmp_path / name)))
    with pytest.raises(NotALakeError, match="half-created lake.*robot-rl lake init"):
        Lake.open(tmp_path / "a")
    assert cli(["lake", "info", "--lake", str(tmp_path / "a")]) == 2
    assert "half-created" in capsys.readouterr().err
    assert cli(["lake", "init", str(tmp_path / "a")]) == 0
    assert len(Lake.open(tmp_path / "a").checkout()) == 0
    lake = Lake.open_or_create(tmp_path / "b")  # what collect and ogbench generate do
    lake.append([synthetic_episode(1, length=10, size=16)])
    assert lake.log()[1].message == "init robot-rl lake" and lake.verify().ok


# ---------------------------------------------------------------------------- storage errors
def _unshare_works() -> bool:
    try:
        r = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


needs_unshare = pytest.mark.skipif(
    not _unshare_works(), reason="needs user namespaces (unshare -rm) for read-only and tmpfs mounts"
)

STORAGE_CHILD = """
import contextlib, io, json, subprocess, sys
from data_lake import Lake
from data_lake.synthetic import synthetic_episode
from robot_rl.cli import main

mode, d, eps_dir = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}

def cli(*args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, err.getvalue()

def state(lake):
    return {"main": lake.resolve("main"), "branches": sorted(lake.repo.list_branches()),
            "episodes": len(lake.checkout()), "ok": lake.verify().ok}

if mode == "full":
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", d], check=True)
lake = Lake.create(d + "/lake")
lake.append([synthetic_episode(i, length=20, size=32) for i in range(3)])
out["before"] = state(lake)
big = [synthetic_episode(100 + i, length=200, size=32, noise=30.0) for i in range(12)]  # > 3 MB
paths = [str(ep.save_npz(f"{eps_dir}/{i}.npz")) for i, ep in enumerate(big)]  # outside the mount
if mode == "readonly":
    subprocess.run(["mount", "--bind", d, d], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", d], check=True)
    out["tag"] = cli("lake", "tag", "v1", "--lake", d + "/lake")
out["append"] = cli("lake", "append", "--lake", d + "/lake", *paths)
out["after"] = state(Lake.open(d + "/lake"))
if mode == "full":  # gc frees what the failed write left behind; then a smaller append lands
    out["gc"] = cli("lake", "gc", "--lake", d + "/lake", "--min-age", "0")
    out["retry"] = cli("lake", "append", "--lake", d + "/lake", *paths[:2])
    out["after_retry"] = state(Lake.open(d + "/lake"))
print("RESULT " + json.dumps(out))
"""


def _storage_fault(mode: str, tmp_path: Path) -> dict:
    d = tmp_path / "mnt"
    d.mkdir()
    (tmp_path / "eps").mkdir()
    r = _child(STORAGE_CHILD, mode, str(d), str(tmp_path / "eps"), unshare=True)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, r.stdout + r.stderr
    return json.loads(line[len("RESULT ") :])


@needs_unshare
def test_a_read_only_lake_gives_a_clear_error_and_stays_unchanged(tmp_path: Path) -> None:
    out = _storage_fault("readonly", tmp_path)
    for op in ("append", "tag"):
        rc, err = out[op]
        assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "read-only" in err and "the lake is unchanged" in err and "/lake" in err, err
    assert out["after"] == out["before"]


@needs_unshare
def test_a_full_disk_gives_a_clear_error_and_the_lake_is_unchanged(tmp_path: Path) -> None:
    out = _storage_fault("full", tmp_path)
    rc, err = out["append"]
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in err and "the lake is unchanged" in err and "lake gc" in err, err
    assert out["after"] == out["before"]  # same snapshot, no staging branch left, verifies
    assert out["before"]["branches"] == ["main"]
    assert out["gc"][0] == 0, out["gc"]
    rc, err = out["retry"]
    assert rc == 0, err
    assert out["after_retry"]["episodes"] == 5 and out["after_retry"]["ok"]


# ---------------------------------------------------------------------------- durability
def test_every_file_a_commit_references_is_fsynced_before_the_branch_moves(tmp_path: Path, monkeypatch) -> None:
    import data_lake.storage as storage

    lake = Lake.create(tmp_path / "lake")
    events: list[tuple[str, str]] = []
    real_fsync = storage.fsync_path
    real_reset = ic.Repository.reset_branch

    def fsync_path(path: str) -> None:
        events.append(("fsync", os.path.relpath(path, tmp_path / "lake")))
        real_fsync(path)

    def reset_branch(self, branch: str, *a, **k) -> None:
        events.append(("reset", branch))
        real_reset(self, branch, *a, **k)

    monkeypatch.setattr(storage, "fsync_path", fsync_path)
    monkeypatch.setattr(ic.Repository, "reset_branch", reset_branch)
    before = {p.relative_to(tmp_path / "lake").as_posix() for p in (tmp_path / "lake").rglob("*") if p.is_file()}
    lake.append([synthetic_episode(i, length=20, size=16) for i in range(2)])
    after = {p.relative_to(tmp_path / "lake").as_posix() for p in (tmp_path / "lake").rglob("*") if p.is_file()}
    new_data = {p for p in after - before if p.split("/")[0] in ("chunks", "manifests", "snapshots", "transactions")}
    assert any(p.startswith("chunks/") for p in new_data) and any(p.startswith("snapshots/") for p in new_data)
    moved = events.index(("reset", "main"))
    synced_before = {p for kind, p in events[:moved] if kind == "fsync"}
    assert new_data <= synced_before, new_data - synced_before
    assert ("fsync", "refs/branch.main/ref.json") in events[moved:]
    assert lake.branches() == ["main"] and sorted(lake.repo.list_branches()) == ["main"]


def test_chunks_are_synced_while_the_writing_goes_on(tmp_path: Path, monkeypatch) -> None:
    """``early_writeback``: files that appear under the block's directories are fsynced while the
    block still runs (a head start for the disk); files that were there before are left alone."""
    import threading

    import data_lake.storage as storage

    (tmp_path / "chunks").mkdir()
    (tmp_path / "chunks" / "old").write_bytes(b"x")
    synced: list[str] = []
    seen = threading.Condition()
    real_fsync = storage.fsync_path

    def fsync_path(path: str) -> None:
        real_fsync(path)
        with seen:
            synced.append(os.path.basename(path))
            seen.notify_all()

    monkeypatch.setattr(storage, "fsync_path", fsync_path)
    with storage.early_writeback(str(tmp_path), storage.listing(str(tmp_path), ("chunks",))):
        for k in range(3):
            (tmp_path / "chunks" / f"new{k}").write_bytes(os.urandom(1 << 16))
            with seen:
                assert seen.wait_for(lambda k=k: f"new{k}" in synced, timeout=10), synced
    assert sorted(synced) == ["new0", "new1", "new2"]


KILL_BEFORE_BRANCH_MOVES = """
import os, signal, sys
import icechunk as ic
from data_lake import Lake
from data_lake.synthetic import synthetic_episode

real = ic.Repository.reset_branch

def die_before_main_moves(self, branch, *args, **kwargs):
    if branch == "main":  # the staging commit is on disk; main has not moved: a power loss now
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, branch, *args, **kwargs)

ic.Repository.reset_branch = die_before_main_moves
Lake.open(sys.argv[1]).append([synthetic_episode(i, length=20, size=16) for i in range(10, 13)])
"""


def test_a_crash_between_the_commit_and_the_branch_moving_leaves_the_old_tip(tmp_path: Path) -> None:
    lake = Lake.create(tmp_path / "lake")
    lake.append([synthetic_episode(i, length=20, size=16) for i in range(2)])
    tip = lake.resolve("main")
    r = _child(KILL_BEFORE_BRANCH_MOVES, str(tmp_path / "lake"))
    assert r.returncode == -9, r.stderr
    lake = Lake.open(tmp_path / "lake")
    assert lake.resolve("main") == tip and len(lake.checkout()) == 2 and lake.verify().ok
    assert lake.branches() == ["main"]  # the dead writer's staging branch is not a user branch
    assert any(b.startswith(STAGING_PREFIX) for b in lake.repo.list_branches())
    lake.append([synthetic_episode(20, length=20, size=16)])
    assert len(lake.checkout()) == 3
    assert sorted(lake.repo.list_branches()) == ["main"]  # the stale staging branch was removed


def test_durability_can_be_switched_off_for_benchmarks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ROBOT_RL_LAKE_FSYNC", "0")
    lake = Lake.create(tmp_path / "lake")
    assert not lake.durable
    lake.append([synthetic_episode(0, length=10, size=16)])
    assert len(lake.checkout()) == 1 and lake.log()[0].operation == "append"
