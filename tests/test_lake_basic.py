"""The lake on real Icechunk repositories: round trips, schema rules, bad input, refs and writes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from data_lake import (
    Episode,
    EpisodeFormatError,
    EpisodeValidationError,
    Lake,
    LakeError,
    NotALakeError,
    UnknownRefError,
    UnsupportedURIError,
    save_dir,
)
from data_lake.synthetic import synthetic_episode
from robot_rl.cli import main as cli


def ep(seed: int, **kw) -> Episode:
    kw.setdefault("length", 6)
    kw.setdefault("size", 16)
    return synthetic_episode(seed, **kw)


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake.create(tmp_path / "lake")


def assert_same_episode(a: Episode, b: Episode) -> None:
    assert a.steps.keys() == b.steps.keys()
    for k in a.steps:
        assert a.steps[k].dtype == b.steps[k].dtype, k
        np.testing.assert_array_equal(a.steps[k], b.steps[k], err_msg=k)
    assert a.goal.keys() == b.goal.keys()
    for k in a.goal:
        np.testing.assert_array_equal(a.goal[k], b.goal[k], err_msg=k)
    assert a.record() == b.record()
    assert a.episode_id == b.episode_id


# ---------------------------------------------------------------------------- round trips
def test_round_trip_every_field_and_record(lake: Lake) -> None:
    rng = np.random.default_rng(0)
    T = 7
    e = Episode.make(
        images={
            "front": rng.integers(0, 256, (T, 12, 16, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (T, 12, 16, 3), dtype=np.uint8),
        },
        depth={"front": rng.random((T, 12, 16), dtype=np.float32)},
        state=rng.normal(size=(T, 5)).astype(np.float32),
        action=rng.uniform(-1, 1, (T, 4)).astype(np.float32),
        reward=rng.random(T, dtype=np.float32),
        timestamp_ns=np.cumsum(rng.integers(1, 10**7, T)).astype(np.int64),
        is_terminal=True,
        achieved_goal=rng.normal(size=(T, 3)).astype(np.float32),
        goal_images={"front": rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)},
        goal_state=rng.normal(size=3).astype(np.float32),
        task="tabletop/push_red_to_pad",
        language="push the red block onto the pad",
        success=True,
        source="test:round_trip",
        robot="panda",
        metadata={"operator": "ada", "nested": {"k": [1, 2.5, None]}},
    )
    res = lake.append([e])
    assert res.added == 1 and res.snapshot_id is not None
    view = lake.checkout(res.snapshot_id)
    back = view.read_episode(e.episode_id)
    assert_same_episode(e, back)
    (rec,) = view.episodes()
    assert (rec.task, rec.language, rec.success, rec.robot, rec.length) == (e.task, e.language, True, "panda", T)
    assert rec.goal_keys == ("images/front", "state")
    # the whole-segment path returns the same episode
    (seg_ep,) = list(view.iter_episodes())
    assert_same_episode(e, seg_ep)


def test_episodes_without_goal_and_per_episode_goal_presence(lake: Lake) -> None:
    a, b = ep(1), ep(2, with_goal=False)
    lake.append([a, b])
    view = lake.checkout()
    assert view.read_episode(b.episode_id).goal == {}
    assert set(view.read_episode(a.episode_id).goal) == {"images/front", "state"}
    loaded = view.load(progress=False)
    assert loaded.has_goal["state"] == [True, False]
    assert loaded.steps["images/front"].shape == (12, 16, 16, 3)


def test_npz_and_directory_formats_round_trip(tmp_path: Path, lake: Lake) -> None:
    e1, e2 = ep(3), ep(4)
    f = e1.save_npz(tmp_path / "in" / "a.npz")
    d = save_dir(e2, tmp_path / "in" / "b")
    assert_same_episode(e1, Episode.load(f))
    assert_same_episode(e2, Episode.load(d))
    assert cli(["lake", "append", "--lake", str(lake.location.path), str(tmp_path / "in")]) == 0
    out = tmp_path / "out"
    assert cli(["lake", "export", "--lake", str(lake.location.path), str(out)]) == 0
    ids = sorted(p.stem for p in out.glob("*.npz"))
    assert ids == sorted([e1.episode_id, e2.episode_id])
    # exported files re-append into a fresh lake with identical ids
    other = Lake.create(tmp_path / "other")
    res = other.append([Episode.load(p) for p in sorted(out.glob("*.npz"))])
    assert sorted(other.checkout().episode_ids()) == ids and res.added == 2


def test_npz_without_meta_or_with_pickle_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", action=np.zeros((3, 2), np.float32))
    with pytest.raises(EpisodeFormatError, match="meta"):
        Episode.load(tmp_path / "x.npz")
    np.savez(tmp_path / "y.npz", meta=np.array("{}"), action=np.array([{"a": 1}], dtype=object))
    with pytest.raises(EpisodeFormatError, match="y.npz"):
        Episode.load(tmp_path / "y.npz")
    (tmp_path / "z.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(EpisodeFormatError, match="z.npz"):
        Episode.load(tmp_path / "z.npz")


def test_content_hash_ignores_provenance_and_dedups(lake: Lake) -> None:
    e = ep(5)
    same = e.replace(source="another:run", created_at="2020-01-01T00:00:00+00:00", metadata={"x": 1})
    assert same.episode_id == e.episode_id
    assert e.replace(task="other").episode_id != e.episode_id
    r1 = lake.append([e, ep(6)])
    e7 = ep(7)
    r2 = lake.append([same, e7, ep(7)])
    assert (r1.added, r2.added, r2.skipped_duplicates) == (2, 1, 2)
    r3 = lake.append([e])
    assert r3.snapshot_id is None and r3.skipped_duplicates == 1
    view = lake.checkout()
    assert len(view) == 3
    assert len(lake.log()) == 4  # create, init, two appends: the no-op made no commit
    # one segment per append, holding exactly the new episodes
    assert len(view.segment_names()) == 2
    assert view.episode_ids() == [e.episode_id, ep(6).episode_id, ep(7).episode_id]
    assert_same_episode(view.read_episode(e7.episode_id), e7)


def test_a_repeat_inside_one_append_is_skipped_even_when_the_schema_grew_in_between(lake: Lake) -> None:
    """A repeat that misses a field added earlier in the same append is a duplicate, not a
    schema problem."""
    lake.append([ep(0)])
    e1 = ep(1)
    res = lake.append([e1, ep(2, cameras=("front", "wrist")), ep(1)], allow_new_fields=True)
    assert (res.added, res.skipped_duplicates, res.quarantined) == (2, 1, ())
    assert lake.checkout().episode_ids() == [
        ep(0).episode_id,
        e1.episode_id,
        ep(2, cameras=("front", "wrist")).episode_id,
    ]


def test_image_codec_follows_how_well_frames_compress(lake: Lake) -> None:
    """Rendered frames: lz4hc; sensor noise: no compressor (raw); all-black chunks are stored too."""
    rng = np.random.default_rng(0)
    rendered = ep(1, length=40, size=32, cameras=("a", "b", "c"))
    steps = dict(rendered.steps)
    steps["images/b"] = rng.integers(0, 256, steps["images/b"].shape, dtype=np.uint8)
    steps["images/c"] = np.zeros_like(steps["images/c"])
    mixed = rendered.replace(steps=steps)
    lake.append([mixed])
    view = lake.checkout()
    (name,) = view.segment_names()
    seg = view._segment(name)
    names = {k: [type(c).__name__ + ":" + str(getattr(c, "cname", "")) for c in seg[f"steps/images/{k}"].compressors]
             for k in "abc"}  # fmt: skip
    assert names == {"a": ["BloscCodec:BloscCname.lz4hc"], "b": [], "c": ["BloscCodec:BloscCname.lz4hc"]}
    assert_same_episode(view.read_episode(mixed.episode_id), mixed)


def test_pinned_snapshot_reads_same_bytes_after_new_commits(lake: Lake) -> None:
    lake.append([ep(i) for i in range(3)])
    snap = lake.tag("v1")
    view = lake.checkout("tag:v1")
    before = view.load(progress=False).steps["images/front"].copy()
    lake.append([ep(i) for i in range(3, 6)])
    lake.delete(episode_ids=[ep(0).episode_id])
    lake.compact(target_steps=10**6)
    again = Lake.open(lake.location.path).checkout(snap)
    np.testing.assert_array_equal(again.load(progress=False).steps["images/front"], before)
    assert len(lake.checkout("main")) == 5


# ---------------------------------------------------------------------------- schema
def test_first_append_fixes_schema_and_mismatch_names_the_field(lake: Lake) -> None:
    lake.append([ep(1)])
    with pytest.raises(EpisodeValidationError) as ei:
        lake.append([ep(2, size=32)])
    msg = str(ei.value)
    assert "images/front" in msg and "(32, 32, 3)" in msg and "(16, 16, 3)" in msg
    with pytest.raises(EpisodeValidationError, match="missing; the lake stores"):
        lake.append([ep(3, cameras=())])
    with pytest.raises(EpisodeValidationError, match="images/wrist.*allow_new_fields"):
        lake.append([ep(4, cameras=("front", "wrist"))])
    assert len(lake.checkout()) == 1


def test_allow_new_fields_extends_schema(lake: Lake) -> None:
    lake.append([ep(1)])
    wide = ep(2, cameras=("front", "wrist"))
    res = lake.append([wide], allow_new_fields=True)
    assert res.added == 1
    schema = lake.checkout().schema
    assert "images/wrist" in schema["step"]
    assert "images/wrist" in lake.checkout().read_episode(wide.episode_id).steps
    assert "images/wrist" not in lake.checkout().read_episode(ep(1).episode_id).steps
    with pytest.raises(EpisodeValidationError, match="images/wrist.*missing"):
        lake.append([ep(3)])  # the new field is now required
    assert lake.verify().ok


# ---------------------------------------------------------------------------- bad input
def _bad(e: Episode, key: str, value) -> Episode:
    return e.replace(steps={**e.steps, key: value})


@pytest.mark.parametrize(
    ("mutate", "code", "needle"),
    [
        (
            lambda e: _bad(
                e, "state", np.where(np.arange(6)[:, None] == 3, np.nan, e.steps["state"]).astype(np.float32)
            ),
            "non_finite",
            "state at step 3",
        ),
        (lambda e: _bad(e, "action", e.steps["action"].astype(np.float64)), "dtype", "expected float32, found float64"),
        (
            lambda e: _bad(e, "state", [np.zeros(6, np.float32)] * 4 + [np.zeros(5, np.float32)] * 2),
            "shape",
            "state at step 4: ragged",
        ),
        (lambda e: _bad(e, "reward", np.zeros(5, np.float32)), "shape", "reward: has 5 steps, but 'action' has 6"),
        (lambda e: _bad(e, "timestamp_ns", np.array([0, 1, 2, 2, 4, 5], np.int64)), "timestamps", "step 3"),
        (lambda e: _bad(e, "images/front", e.steps["images/front"].astype(np.float32)), "image", "expected uint8"),
        (lambda e: _bad(e, "images/front", e.steps["images/front"][..., :1]), "image", "(T, H, W, 3)"),
        (lambda e: synthetic_episode(1, length=1, size=16), "too_short", "at least 2"),
        (lambda e: e.replace(steps={k: v for k, v in e.steps.items() if k != "reward"}), "missing_field", "reward"),
        (lambda e: _bad(e, "is_terminal", np.array([0, 1, 0, 0, 0, 0], bool)), "flags", "is_terminal at step 1"),
        (lambda e: e.replace(goal={"state": np.array([np.inf, 0], np.float32)}), "non_finite", "goal/state"),
        (lambda e: e.replace(metadata={"f": object()}), "record", "JSON"),
    ],
)
def test_bad_episode_rejects_whole_append(lake: Lake, mutate, code: str, needle: str) -> None:
    lake.append([ep(0)])
    before = lake.resolve("main")
    with pytest.raises(EpisodeValidationError) as ei:
        lake.append([ep(1), mutate(ep(2)), ep(3)], labels=["a.npz", "b.npz", "c.npz"])
    assert any(p.code == code for p in ei.value.problems), ei.value.problems
    assert needle in str(ei.value) and "b.npz" in str(ei.value)
    assert lake.resolve("main") == before  # nothing committed
    assert len(lake.checkout()) == 1


def test_skip_invalid_commits_valid_and_writes_quarantine(tmp_path: Path, lake: Lake) -> None:
    good = ep(1)
    good.save_npz(tmp_path / "in" / "good.npz")
    _bad(ep(2), "action", ep(2).steps["action"] * np.nan).save_npz(tmp_path / "in" / "nan.npz")
    ep(3, size=8).save_npz(tmp_path / "in" / "small.npz")
    lake.append([ep(0)])  # fixes the schema at 16x16
    report = tmp_path / "q.json"
    rc = cli(
        [
            "lake",
            "append",
            "--lake",
            str(tmp_path / "lake"),
            "--skip-invalid",
            "--quarantine",
            str(report),
            str(tmp_path / "in"),
        ]
    )
    assert rc == 0
    rows = json.loads(report.read_text())
    by_file = {Path(r["episode"]).name: r for r in rows}
    assert set(by_file) == {"nan.npz", "small.npz"}
    assert by_file["nan.npz"]["reasons"][0]["code"] == "non_finite"
    assert by_file["nan.npz"]["reasons"][0]["step"] == 0
    assert by_file["small.npz"]["reasons"][0]["code"] == "schema_mismatch"
    assert sorted(lake.checkout().episode_ids()) == sorted([ep(0).episode_id, good.episode_id])


def test_uri_and_path_errors(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedURIError, match="gs://"):
        Lake.open("gs://bucket/x")
    with pytest.raises(NotALakeError, match="does not exist"):
        Lake.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("x")
    with pytest.raises(NotALakeError, match="not a lake"):
        Lake.open(tmp_path / "plain")
    with pytest.raises(LakeError, match="not an empty directory"):
        Lake.create(tmp_path / "plain")
    import icechunk as ic
    import zarr

    repo = ic.Repository.create(ic.local_filesystem_storage(str(tmp_path / "other")))
    session = repo.writable_session("main")
    zarr.group(store=session.store).attrs["something"] = "else"
    session.commit("someone else's data")
    with pytest.raises(NotALakeError, match="not a robot-rl lake"):
        Lake.open(tmp_path / "other")
    with pytest.raises(LakeError, match="a repository already exists"):
        Lake.create(tmp_path / "other")


def test_memory_lake_and_refs() -> None:
    uri = f"memory://{uuid.uuid4().hex}"
    lake = Lake.create(uri)
    lake.append([ep(1)])
    assert len(Lake.open(uri).checkout()) == 1
    s1 = lake.tag("v1")
    lake.branch("exp", "tag:v1")
    lake.append([ep(2)], branch="exp")
    assert lake.resolve("v1") == lake.resolve("tag:v1") == lake.resolve(s1) == lake.resolve(f"snapshot:{s1}")
    assert len(lake.checkout("branch:exp")) == 2 and len(lake.checkout("main")) == 1
    with pytest.raises(UnknownRefError, match=r"branches: \['exp', 'main'\], tags: \['v1'\]"):
        lake.checkout("v2")
    with pytest.raises(LakeError, match="immutable"):
        lake.tag("v1")
    d = lake.diff("main", "exp")
    assert d["added"] == [ep(2).episode_id] and d["removed"] == []
    with pytest.raises(UnknownRefError, match="no branch 'nope'"):
        lake.append([ep(3)], branch="nope")


# ---------------------------------------------------------------------------- delete / compact / verify
def test_delete_by_id_and_task_keeps_history(lake: Lake) -> None:
    eps = [ep(i, task="a" if i % 2 else "b") for i in range(6)]
    lake.append(eps[:3])
    lake.append(eps[3:])
    old = lake.tag("before")
    res = lake.delete(episode_ids=[eps[1].episode_id])
    assert res.removed == 1
    lake.delete(task="b")
    assert [e for e in lake.checkout().episode_ids()] == [eps[3].episode_id, eps[5].episode_id]
    assert len(lake.checkout(old)) == 6
    with pytest.raises(KeyError, match="not on branch"):
        lake.delete(episode_ids=["0" * 64])
    with pytest.raises(LakeError, match="no episodes of task"):
        lake.delete(task="b")
    assert lake.verify().ok and lake.verify("before").ok


def test_compact_merges_small_segments_preserving_order_and_hashes(lake: Lake) -> None:
    ids = []
    for i in range(5):
        batch = [ep(10 * i + j) for j in range(2)]
        ids += [e.episode_id for e in batch]
        lake.append(batch)
    view = lake.checkout()
    assert len(view.segment_names()) == 5
    res = lake.compact(target_steps=30)  # 2 episodes x 6 steps = 12 steps each: pairs merge
    assert res.segments_before == 5 and res.segments_after == 3
    after = lake.checkout()
    assert after.episode_ids() == ids
    assert lake.verify().ok
    assert lake.compact(target_steps=30).snapshot_id is None  # nothing left to merge
    assert lake.log()[0].operation == "compact"


def test_verify_detects_tampered_content(tmp_path: Path) -> None:
    import zarr

    lake = Lake.create(tmp_path / "lake")
    lake.append([ep(1), ep(2)])
    session = lake.repo.writable_session("main")
    root = zarr.open_group(session.store, mode="r+")
    seg = lake.checkout().segment_names()[0]
    arr = root[f"segments/{seg}/steps/action"]
    arr[3] = arr[3] + 0.5
    session.commit("tamper")
    rep = lake.verify()
    assert not rep.ok and "content hash is now" in rep.problems[0]
    assert cli(["lake", "verify", "--lake", str(tmp_path / "lake")]) == 1


# ---------------------------------------------------------------------------- CLI
def test_cli_commands_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = str(tmp_path / "lake")
    assert cli(["lake", "init", uri]) == 0
    ep(1).save_npz(tmp_path / "e1.npz")
    ep(2, task="other").save_npz(tmp_path / "e2.npz")
    assert cli(["lake", "append", "--lake", uri, str(tmp_path / "e1.npz"), str(tmp_path / "e2.npz"), "-m", "hi"]) == 0
    assert cli(["lake", "tag", "--lake", uri, "v1"]) == 0
    assert cli(["lake", "branch", "--lake", uri, "exp"]) == 0
    assert cli(["lake", "delete", "--lake", uri, "--task", "other", "--branch", "exp"]) == 0
    capsys.readouterr()
    assert cli(["lake", "info", "--lake", uri, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 2 and info["tasks"] == {"other": 1, "synthetic/push": 1} and info["tags"] == ["v1"]
    assert cli(["lake", "log", "--lake", uri, "--json", "--ref", "exp"]) == 0
    log = json.loads(capsys.readouterr().out)
    assert [c["operation"] for c in log[:2]] == ["delete", "append"] and log[1]["message"] == "hi"
    assert cli(["lake", "diff", "--lake", uri, "v1", "exp", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == [ep(2, task="other").episode_id]
    assert cli(["lake", "checkout", "--lake", uri, "v1"]) == 0
    assert "2 episodes" in capsys.readouterr().out
    assert cli(["lake", "info", "--lake", uri]) == 0
    text = capsys.readouterr().out
    assert "images/front" in text and "synthetic/push" in text
    assert cli(["lake", "info", "--lake", str(tmp_path / "missing")]) == 2
    assert "robot-rl lake init" in capsys.readouterr().err


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    assert "lake" in top and "demo" in top
    for sub in [
        "init",
        "info",
        "log",
        "append",
        "export",
        "tag",
        "branch",
        "checkout",
        "diff",
        "verify",
        "compact",
        "delete",
    ]:
        with pytest.raises(SystemExit) as e:
            cli(["lake", sub, "--help"])
        assert e.value.code == 0
        assert "--lake" in capsys.readouterr().out


def test_lake_refuses_use_after_fork(lake: Lake) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child() -> None:
        try:
            lake.checkout()
            q.put("no error")
        except LakeError as e:
            q.put(str(e))

    p = ctx.Process(target=child)
    p.start()
    p.join(30)
    assert "open the lake inside each worker" in q.get(timeout=5)


def test_short_scripts_exit_cleanly(tmp_path: Path) -> None:
    """A script that reads a lake and exits must not abort in Icechunk's threads at shutdown."""
    import subprocess
    import sys

    script = tmp_path / "s.py"
    script.write_text(
        "import sys, zarr\n"
        "from data_lake import Lake\n"
        "from data_lake.synthetic import synthetic_episode\n"
        "lake = Lake.create(sys.argv[1])\n"
        "lake.append([synthetic_episode(i, length=5, size=8) for i in range(3)])\n"
        "g = zarr.open_group(lake.repo.readonly_session('main').store, mode='r')\n"
    )
    codes = [
        subprocess.run(
            [sys.executable, str(script), str(tmp_path / f"l{i}")], capture_output=True, timeout=120
        ).returncode
        for i in range(16)
    ]
    assert codes == [0] * 16


def test_branch_and_tag_names_may_contain_slashes() -> None:
    """finetune/<run> branches: Icechunk forbids '/', the lake stores it escaped and shows it as given."""
    import uuid

    lake = Lake.create(f"memory://{uuid.uuid4().hex}")
    lake.append([synthetic_episode(0, length=5, size=8)])
    lake.branch("finetune/run-1")
    res = lake.append([synthetic_episode(1, length=5, size=8)], branch="finetune/run-1")
    assert res.added == 1 and "finetune/run-1" in lake.branches()
    assert len(lake.checkout("branch:finetune/run-1").episodes()) == 2 and len(lake.checkout("main").episodes()) == 1
    lake.tag("exp/v1", "finetune/run-1")
    assert "exp/v1" in lake.tags() and lake.resolve("tag:exp/v1") == lake.resolve("finetune/run-1")
    assert lake.log("finetune/run-1")[0].message


@pytest.mark.parametrize(
    ("dtype", "shape", "chunks", "codec"),
    [
        ("uint8", (100, 16, 16, 3), (50, 16, 16, 3), "lz4hc"),
        ("uint8", (100, 16, 16, 3), (100, 16, 16, 3), None),
        ("uint16", (10, 8, 8), (10, 8, 8), "lz4"),
        ("float32", (100, 7), (100, 7), "zstd"),
        ("float64", (100, 3), (100, 3), "zstd"),
        ("int64", (100,), (100,), "zstd"),
        ("bool", (100,), (100,), "zstd"),
    ],
)
def test_segment_array_metadata_is_what_zarr_create_array_writes(dtype, shape, chunks, codec) -> None:
    """Segments are created in one create_hierarchy call from metadata we build; it must be
    exactly what zarr.Group.create_array would have written (guards zarr upgrades)."""
    import zarr
    from zarr.codecs import BloscCodec

    from data_lake.segment import array_metadata

    shuffle = "shuffle" if codec == "zstd" else "noshuffle"
    comp = [] if codec is None else [BloscCodec(cname=codec, clevel=3, shuffle=shuffle)]
    g = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    want = g.create_array("a", shape=shape, dtype=dtype, chunks=chunks, compressors=comp, fill_value=0).metadata
    assert array_metadata(shape, dtype, chunks, comp).to_dict() == want.to_dict()


def test_segment_names_from_snapshot_diffs_equal_a_listing(tmp_path: Path) -> None:
    """Views take segment names from a known snapshot plus the diffs since (a process cache) and
    segment tables from a cache: after appends, a delete, a compaction and labels, every snapshot
    of the history lists the segments and episodes a fresh listing gives, with the caches warm,
    cold, and across two Lake objects writing in turn."""
    from data_lake import lake as lake_module

    uri = str(tmp_path / "lake")
    lake = Lake.create(uri)
    for k in range(5):
        lake.append([synthetic_episode(10 * k + i, length=3, size=8) for i in range(2)])
    other = Lake.open(uri)  # a second writer: its commits reach the first one's views through diffs
    other.append([synthetic_episode(99, length=3, size=8)])
    first = lake.checkout("main").episode_ids()[0]
    lake.delete(episode_ids=[first])
    other.compact()
    lake.append([synthetic_episode(100, length=3, size=8)])

    def listed(snapshot: str) -> tuple[list[str], list[str]]:
        view = lake.checkout(snapshot)
        names = sorted(lake_module._list_segments(view._root.store_path.store, ""))
        ids = [eid for n in names for eid in lake_module.attrs_of(view._segment(n))["episodes"]["episode_id"]]
        return names, ids

    history = [info.id for info in lake.repo.ancestry(branch="main")][:-1]  # all but the empty first commit
    for warm in (True, False):
        if not warm:
            lake_module._SEGMENT_NAMES.clear()
            lake_module._SEGMENT_ATTRS.clear()
        for snap in history:
            view = Lake.open(uri).checkout(snap)
            names, ids = listed(snap)
            assert view.segment_names() == names, snap
            assert view.episode_ids() == ids, snap
    assert len(lake.checkout("main").episode_ids()) == 11 - 1 + 1
    assert first not in lake.checkout("main").episode_ids()


@pytest.mark.parametrize(
    "dtype, shape, chunks",
    [
        ("uint8", (1000, 8, 8, 3), (170, 8, 8, 3)),  # frames, an edge chunk of 150 rows
        ("uint8", (340, 4, 4, 3), (170, 4, 4, 3)),  # no edge chunk
        ("float32", (50, 5), (16, 5)),
        (">i4", (7,), (3,)),  # big-endian input: stored little-endian, as zarr does
        ("uint16", (1, 6, 6), (1, 6, 6)),
    ],
)
def test_raw_chunks_written_directly_are_what_zarr_writes(dtype: str, shape: tuple, chunks: tuple) -> None:
    """``put_raw_chunks`` (frames without a compressor go straight to the store) stores every chunk
    byte for byte as ``zarr.Array.__setitem__`` does, edge chunks padded, in a real Icechunk
    session; and reads back the data."""
    import icechunk as ic
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    from data_lake.segment import array_metadata, put_raw_chunks

    data = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
    session = ic.Repository.create(ic.in_memory_storage()).writable_session("main")
    root = zarr.group(session.store)
    meta = array_metadata(shape, np.dtype(dtype).name, chunks, [])
    made = dict(root.create_hierarchy({"direct": meta, "zarr": meta}))
    put_raw_chunks([(made["direct"], data)])
    made["zarr"].with_config({"write_empty_chunks": True})[:] = data
    np.testing.assert_array_equal(root["direct"][:], data)

    async def chunks_of(name: str) -> dict[str, bytes]:
        keys = [k async for k in session.store.list_prefix(name) if "/c/" in k]
        out = {}
        for k in keys:
            buf = await session.store.get(k, default_buffer_prototype())
            assert buf is not None
            out[k.split("/", 1)[1]] = buf.to_bytes()
        return out

    direct, via_zarr = sync(chunks_of("direct")), sync(chunks_of("zarr"))
    assert len(direct) == -(-shape[0] // chunks[0])
    assert direct == via_zarr


def test_lake_commands_do_not_import_torch() -> None:
    """Only the subcommand that runs is imported: `robot-rl lake ...` starts in a fraction of a second."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from robot_rl.cli import main\n"
        "try:\n    main(['lake', 'info', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout
