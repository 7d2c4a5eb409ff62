"""`robot-rl lake gc` on real local lakes: a failed append's chunks are found and removed, and
nothing any branch, tag or snapshot in their history reaches is touched.

Every lake here has a history: appends, a tag on an early snapshot, a branch with its own commit,
and a delete on main, so the deleted episodes' chunks are reachable only from the tag and older
snapshots. Then an append fails the way a killed one does: its segment is written in a writable
Icechunk session that is never committed, leaving chunk files nothing references.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from data_lake import Episode, Lake, UnknownRefError
from data_lake.gc import DEFAULT_MIN_AGE, collect_garbage, format_age, parse_age
from data_lake.lake import MARKER
from data_lake.segment import attrs_of, new_segment_name, write_segment
from data_lake.synthetic import synthetic_episode
from robot_rl.cli import main as cli

ZERO = dt.timedelta(0)


@functools.cache
def ep(seed: int) -> Episode:
    # noisy frames compress poorly, so every segment's images land in chunk files (Icechunk inlines
    # chunks under 512 bytes into the manifest)
    return synthetic_episode(seed, length=8, size=32, noise=20.0)


def make_history(path: Path) -> Lake:
    """init; +0,1,2 (tag v1); +3,4; -0,1 (branch exp: +5); +6,7; -3,6 on main.

    Episodes 0 and 1 are then only in the tag (and old snapshots), 6 only in main's history.
    """
    lake = Lake.create(path)
    lake.append([ep(s) for s in (0, 1, 2)])
    lake.tag("v1")
    lake.append([ep(s) for s in (3, 4)])
    assert lake.delete(episode_ids=[ep(s).episode_id for s in (0, 1)]).removed == 2
    lake.branch("exp")
    lake.append([ep(5)], branch="exp")
    lake.append([ep(s) for s in (6, 7)])
    assert lake.delete(episode_ids=[ep(s).episode_id for s in (3, 6)]).removed == 2
    return lake


def failed_append(lake: Lake, seeds: tuple[int, ...]) -> set[str]:
    """Write a segment as an append does and never commit (what a killed append leaves); returns
    the chunk files it wrote."""
    before = set(os.listdir(Path(lake.location.path) / "chunks"))
    session = lake.repo.writable_session("main")
    root = zarr.open_group(session.store, mode="r+")
    eps = [ep(s) for s in seeds]
    write_segment(root, new_segment_name(), eps, [e.episode_id for e in eps], attrs_of(root)[MARKER]["schema"])
    assert session.has_uncommitted_changes
    del session, root
    new = set(os.listdir(Path(lake.location.path) / "chunks")) - before
    assert new, "the failed write left no chunk files: make its episodes bigger"
    return {os.path.join(lake.location.path, "chunks", n) for n in new}


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: relative path -> (size, mtime_ns)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def every_ref(lake: Lake) -> list[str]:
    """Every tag, every branch, and every snapshot id in the log of each of them (but Icechunk's
    first, empty snapshot, from before the lake's init commit: it holds no lake to read)."""
    refs = [f"tag:{t}" for t in lake.tags()] + [f"branch:{b}" for b in lake.branches()]
    snaps = {c.snapshot_id for r in refs for c in lake.log(r) if c.parent_id is not None}
    return refs + sorted(snaps)


def contents(lake: Lake, ref: str) -> dict[str, Episode]:
    return {e.episode_id: e for e in lake.checkout(ref).iter_episodes()}


def assert_same(a: dict[str, Episode], b: dict[str, Episode]) -> None:
    assert a.keys() == b.keys()
    for eid, x in a.items():
        y = b[eid]
        assert x.steps.keys() == y.steps.keys() and x.goal.keys() == y.goal.keys()
        for k in x.steps:
            np.testing.assert_array_equal(x.steps[k], y.steps[k], err_msg=k)
        for k in x.goal:
            np.testing.assert_array_equal(x.goal[k], y.goal[k], err_msg=k)
        assert x.record() == y.record()


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return make_history(tmp_path / "lake")


# ---------------------------------------------------------------------------- the premise
def test_history_holds_data_only_old_refs_reach(lake: Lake) -> None:
    """The tag and old snapshots hold episodes main no longer has, so a gc that collected by the
    branch tips alone would delete their chunks (and the tests below would fail)."""
    main, v1, exp = (set(lake.checkout(r).episode_ids()) for r in ("main", "tag:v1", "branch:exp"))
    assert {ep(0).episode_id, ep(1).episode_id} <= v1 - main - exp
    assert ep(6).episode_id not in main | v1 | exp  # only in the history of main
    assert ep(6).episode_id in set(lake.checkout(lake.log("main")[1].snapshot_id).episode_ids())


# ---------------------------------------------------------------------------- dry run
def test_dry_run_lists_exactly_the_orphans_and_removes_nothing(lake: Lake, tmp_path: Path) -> None:
    orphans = failed_append(lake, (20, 21, 22))
    root = Path(lake.location.path)
    before, siblings = tree(root), sorted(os.listdir(tmp_path))
    rep = collect_garbage(lake, min_age=ZERO, dry_run=True)
    assert rep.dry_run
    assert set(rep.files or ()) == orphans
    assert rep.counts == {
        "chunks": len(orphans),
        "manifests": 0,
        "snapshots": 0,
        "transaction_logs": 0,
        "attributes": 0,
    }
    assert rep.bytes == sum(os.path.getsize(p) for p in orphans) == (rep.bytes_by_kind or {})["chunks"]
    assert rep.expired_snapshots == () and rep.expire_before is None
    assert tree(root) == before  # nothing removed, no modification time changed
    assert sorted(os.listdir(tmp_path)) == siblings  # the scratch copy is gone


# ---------------------------------------------------------------------------- the real thing
def test_gc_removes_exactly_the_orphans_and_every_ref_still_reads(lake: Lake) -> None:
    refs = every_ref(lake)
    # tag v1, branches exp and main; snapshots: the lake's init, 5 on main, 1 on exp
    assert len(refs) == 3 + 7
    first = lake.log("main")[-1].snapshot_id
    wanted = {r: contents(lake, r) for r in refs}
    orphans = failed_append(lake, (20, 21, 22))
    root = Path(lake.location.path)
    before = tree(root)

    rep = collect_garbage(lake, min_age=ZERO)

    assert not rep.dry_run
    assert set(rep.files or ()) == orphans
    assert rep.counts["chunks"] == len(orphans) and rep.objects == len(orphans)
    assert rep.bytes == sum(before[os.path.relpath(p, root)][0] for p in orphans)
    after = tree(root)
    assert set(before) - set(after) == {os.path.relpath(p, root) for p in orphans}
    assert {k: v for k, v in before.items() if k in after} == after  # the rest untouched

    fresh = Lake.open(root)  # no Icechunk caches from before the gc
    assert fresh.tags() == ["v1"] and fresh.branches() == ["exp", "main"]
    assert every_ref(fresh) == refs and fresh.log("main")[-1].snapshot_id == first
    for r in refs:
        rep_r = fresh.verify(r)
        assert rep_r.ok, (r, rep_r.problems)
        assert_same(contents(fresh, r), wanted[r])
    assert fresh.append([ep(30)]).added == 1  # and it takes new commits

    again = collect_garbage(fresh, min_age=ZERO)
    assert again.objects == 0 and again.files == ()


def test_default_min_age_keeps_fresh_orphans(lake: Lake) -> None:
    orphans = failed_append(lake, (20, 21))
    root = Path(lake.location.path)
    before = tree(root)
    for dry_run in (True, False):
        rep = collect_garbage(lake, dry_run=dry_run)  # DEFAULT_MIN_AGE: the files are seconds old
        assert rep.min_age_s == DEFAULT_MIN_AGE.total_seconds() > 0
        assert rep.objects == 0 and rep.files == () and rep.bytes == 0
    assert tree(root) == before
    assert all(os.path.exists(p) for p in orphans)


# ---------------------------------------------------------------------------- snapshot expiry
def test_expiry_is_opt_in_and_keeps_every_tag_and_branch(lake: Lake) -> None:
    root = Path(lake.location.path)
    tips = {r: (lake.resolve(r), contents(lake, r)) for r in ("tag:v1", "branch:exp", "branch:main")}
    history = {c.snapshot_id for r in tips for c in lake.log(r)}
    before = tree(root)

    dry = collect_garbage(lake, min_age=ZERO, expire_older_than=ZERO, dry_run=True)
    assert tree(root) == before
    assert {c.snapshot_id for r in tips for c in Lake.open(root).log(r)} == history  # nothing expired
    # expired: the lake's init, +3,4, -0,1 and +6,7 (no ref points at them; Icechunk keeps its first
    # snapshot); of their data only the 6,7 segment goes, as exp still holds 3,4 and the tag 0,1,2
    assert len(dry.expired_snapshots) == 4 and dry.counts["snapshots"] == 4
    assert dry.counts["chunks"] > 0
    assert {f"snapshots/{s}" for s in dry.expired_snapshots} <= {os.path.relpath(p, root) for p in dry.files or ()}

    rep = collect_garbage(lake, min_age=ZERO, expire_older_than=ZERO)
    assert set(rep.files or ()) == set(dry.files or ()) and rep.expired_snapshots == dry.expired_snapshots
    fresh = Lake.open(root)
    assert fresh.tags() == ["v1"] and fresh.branches() == ["exp", "main"]
    for r, (snap, eps) in tips.items():
        assert fresh.resolve(r) == snap
        assert fresh.verify(r).ok
        assert_same(contents(fresh, r), eps)
    for s in rep.expired_snapshots:
        with pytest.raises(UnknownRefError):
            fresh.resolve(s)


def test_memory_lake_reports_counts_without_paths() -> None:
    lake = Lake.create("memory://gc-test")
    lake.append([ep(0)])
    rep = collect_garbage(lake, min_age=ZERO, dry_run=True)
    assert rep.files is None and rep.bytes_by_kind is None and rep.objects == 0
    with pytest.raises(ValueError, match="needs a local lake"):
        collect_garbage(lake, min_age=ZERO, expire_older_than=ZERO, dry_run=True)


# ---------------------------------------------------------------------------- command line
def test_cli_dry_run_prints_the_paths(lake: Lake, capsys: pytest.CaptureFixture[str]) -> None:
    orphans = failed_append(lake, (20, 21, 22))
    root = Path(lake.location.path)
    before = tree(root)
    assert cli(["lake", "gc", "--lake", str(root), "--min-age", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"dry run: would remove {len(orphans)} chunks (")
    assert set(out[1:]) == orphans
    assert tree(root) == before

    assert cli(["lake", "gc", "--lake", str(root), "--min-age", "0", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert set(d["files"]) == orphans and d["counts"]["chunks"] == len(orphans) and not d["dry_run"]
    assert not any(os.path.exists(p) for p in orphans)


def test_cli_caps_the_printed_list(lake: Lake, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    import robot_rl.commands.lake

    monkeypatch.setattr(robot_rl.commands.lake, "GC_MAX_LISTED", 1)
    orphans = failed_append(lake, (20, 21, 22))
    assert cli(["lake", "gc", "--lake", lake.location.path, "--min-age", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[2] == f"... and {len(orphans) - 1} more (--json lists all)"


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--min-age", "yesterday"), ("--min-age", "3"), ("--min-age", "-1d"), ("--expire-snapshots-older-than", "x")],
)
def test_cli_rejects_a_bad_age(lake: Lake, capsys: pytest.CaptureFixture[str], flag: str, value: str) -> None:
    failed_append(lake, (20,))
    before = tree(Path(lake.location.path))
    args = ["lake", "gc", "--lake", lake.location.path, "--dry-run", f"{flag}={value}"]
    if flag != "--min-age":
        args += ["--min-age", "0"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag}: ") and "30m, 12h, 1d or 2w" in err and repr(value) in err
    assert tree(Path(lake.location.path)) == before


def test_parse_age() -> None:
    h = dt.timedelta(hours=1)
    assert parse_age("0") == parse_age("0s") == ZERO
    assert parse_age("12h") == 12 * h and parse_age("1d") == 24 * h and parse_age(" 1.5d ") == 36 * h
    assert parse_age("30m") == h / 2 and parse_age("2w") == 14 * 24 * h
    assert parse_age("90", "--expire-snapshots-older-than", bare_unit="d") == dt.timedelta(days=90)
    for bad in ("", "1y", "d", "1 day", "1d2h", "nan"):
        with pytest.raises(ValueError, match="--min-age: "):
            parse_age(bad)
    assert [format_age(parse_age(s)) for s in ("0", "1d", "12h", "30m", "2w", "90s")] == [
        "0",
        "1d",
        "12h",
        "30m",
        "2w",
        "90s",
    ]
