"""Damaged chunk files in a real lake: verify reports every one, the CLI says how to recover, and
deleting the damaged episodes repairs the branch while older snapshots keep (and report) them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

from data_lake import Episode, Lake, LakeError, segment
from data_lake.synthetic import synthetic_episode
from data_lake.verify import HASH_MISMATCH, UNREADABLE_CHUNK
from robot_rl.cli import main as cli

SIZE, LENGTH = 32, 6
IMAGES = "steps/images/front"


def ep(seed: int) -> Episode:
    return synthetic_episode(seed, length=LENGTH, size=SIZE)


@pytest.fixture
def one_episode_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Image chunks of exactly one episode's frames, so each episode has chunk files of its own
    (the default, ~2 MB, would put a whole small segment in one chunk)."""
    monkeypatch.setattr(segment, "IMAGE_CHUNK_BYTES", LENGTH * SIZE * SIZE * 3)


def chunk_file(lake: Lake, ref: str, seg: str, array: str, coords: tuple[int, ...]) -> Path:
    """The file under ``<lake>/chunks`` holding one chunk: the file with exactly its bytes."""
    root = zarr.open_group(lake.repo.readonly_session(snapshot_id=lake.resolve(ref)).store, mode="r")
    arr = root[f"segments/{seg}/{array}"]
    assert isinstance(arr, zarr.Array)
    key = f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}"
    raw = arr.store._get_bytes_sync(key, prototype=default_buffer_prototype())
    d = Path(lake.location.path) / "chunks"
    matches = [d / n for n in os.listdir(d) if (d / n).read_bytes() == raw]
    assert len(matches) == 1, f"{array}{list(coords)} of {seg}: {len(matches)} files"
    return matches[0]


def flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))


def three_segments(tmp_path: Path) -> tuple[Lake, list[list[str]], list[str]]:
    """A lake of 3 segments x 3 episodes (one append each), tagged ``before``."""
    lake = Lake.create(tmp_path / "lake")
    ids = []
    for k in range(3):
        batch = [ep(10 * k + i) for i in range(3)]
        lake.append(batch)
        ids.append([e.episode_id for e in batch])
    lake.tag("before")
    segs = lake.checkout().segment_names()
    assert len(segs) == 3
    return lake, ids, segs


def test_verify_lists_every_damaged_chunk_and_delete_repairs_the_branch(
    tmp_path: Path, one_episode_per_chunk: None, capsys: pytest.CaptureFixture[str]
) -> None:
    lake, ids, segs = three_segments(tmp_path)
    uri = str(tmp_path / "lake")
    assert lake.verify().ok
    arr = lake.checkout()._segment(segs[0])[IMAGES]
    assert isinstance(arr, zarr.Array) and arr.cdata_shape[0] == 3  # one image chunk per episode

    truncated = chunk_file(lake, "main", segs[0], IMAGES, (1, 0, 0, 0))  # episode 1 of segment 0
    truncated.write_bytes(truncated.read_bytes()[:200])
    missing = chunk_file(lake, "main", segs[1], IMAGES, (2, 0, 0, 0))  # episode 2 of segment 1
    missing.unlink()
    flipped = chunk_file(lake, "main", segs[2], IMAGES, (0, 0, 0, 0))  # episode 0 of segment 2
    flip_bit(flipped)
    damaged = {ids[0][1], ids[1][2], ids[2][0]}

    rep = Lake.open(uri).verify()
    assert not rep.ok and rep.episodes_checked == 9
    # the unreadable chunks, each with its file and the one episode it holds
    chunks = {(c["segment"], c["array"], tuple(c["chunk"])): c for c in rep.damaged_chunks}
    t = chunks.pop((segs[0], IMAGES, (1, 0, 0, 0)))
    m = chunks.pop((segs[1], IMAGES, (2, 0, 0, 0)))
    assert t["file"] == f"chunks/{truncated.name}" and t["episodes"] == [ids[0][1]] and t["rows"] == [6, 12]
    # checked on the raw bytes, never decoded: Blosc would read past the end of a truncated chunk
    assert "header records" in t["error"] and "the chunk has 200" in t["error"], t["error"]
    assert m["file"] == f"chunks/{missing.name}" and m["episodes"] == [ids[1][2]] and "not found" in m["error"]
    # the flipped bit still decodes (a changed frame: caught by the content hash) or does not
    assert all(c["episodes"] == [ids[2][0]] for c in chunks.values()) and len(chunks) <= 1
    reasons = {e["episode_id"]: e["reason"] for e in rep.damaged_episodes}
    assert set(reasons) == damaged and len(rep.damaged_episodes) == 3
    assert reasons[ids[0][1]] == reasons[ids[1][2]] == UNREADABLE_CHUNK
    assert reasons[ids[2][0]] in (HASH_MISMATCH, UNREADABLE_CHUNK)
    assert not rep.damaged_segments
    assert len(rep.problems) == len(rep.damaged_chunks) + 3

    # the CLI: every damaged chunk and episode, the ways out, exit 1, no traceback
    capsys.readouterr()
    assert cli(["lake", "verify", "--lake", uri]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "FAILED" in out and truncated.name in out and missing.name in out
    assert all(f"episode {e}" in out for e in damaged)
    assert not any(f"episode {e}" in out for batch in ids for e in batch if e not in damaged)
    assert "robot-rl lake verify" in out and "--ref tag:" in out and "robot-rl lake branch" in out
    assert "lake.ref=" in out and "robot-rl lake delete" in out
    assert all(f"--episode {e}" in out for e in damaged)
    assert cli(["lake", "verify", "--lake", uri, "--json"]) == 1
    out, err = capsys.readouterr()
    d = json.loads(out)
    assert "Traceback" not in err and d["ok"] is False
    assert {e["episode_id"] for e in d["damaged_episodes"]} == damaged
    assert {c["file"] for c in d["damaged_chunks"]} >= {f"chunks/{truncated.name}", f"chunks/{missing.name}"}
    assert any("robot-rl lake delete" in line for line in d["recovery"])

    # delete the damaged episodes: a new commit that never reads their chunks
    res = Lake.open(uri).delete(episode_ids=sorted(damaged))
    assert res.removed == 3
    lake = Lake.open(uri)
    rep = lake.verify()
    assert rep.ok and rep.episodes_checked == 6, rep.problems
    kept = [e for batch in ids for e in batch if e not in damaged]
    assert lake.checkout().episode_ids() == kept
    view = lake.checkout()
    for k in range(3):
        for i in range(3):
            if ids[k][i] not in damaged:
                assert view.read_episode(ids[k][i]).episode_id == ep(10 * k + i).episode_id
    assert cli(["lake", "verify", "--lake", uri]) == 0
    # the snapshot from before still holds the damaged episodes, and still reports them
    old = lake.verify("before")
    assert not old.ok and {e["episode_id"] for e in old.damaged_episodes} == damaged
    assert len(lake.checkout("before")) == 9


def test_delete_refuses_to_drop_unreadable_episodes_it_would_keep(tmp_path: Path) -> None:
    """One image chunk holds a whole segment (default chunk size): deleting one of its episodes
    would have to keep the others, whose frames are gone too."""
    lake, ids, segs = three_segments(tmp_path)
    chunk_file(lake, "main", segs[1], IMAGES, (0, 0, 0, 0)).unlink()
    lake = Lake.open(tmp_path / "lake")
    rep = lake.verify()
    assert [c["episodes"] for c in rep.damaged_chunks] == [ids[1]]
    assert {e["episode_id"] for e in rep.damaged_episodes} == set(ids[1])
    head = lake.resolve("main")
    with pytest.raises(LakeError, match="delete them too") as e:
        lake.delete(episode_ids=[ids[1][0]])
    assert ids[1][1] in str(e.value) and ids[1][2] in str(e.value)
    assert lake.resolve("main") == head  # nothing committed
    lake.delete(episode_ids=ids[1])
    assert lake.verify().ok and lake.checkout().episode_ids() == ids[0] + ids[2]


def test_damaged_goal_chunk_names_every_episode_of_its_rows(tmp_path: Path) -> None:
    lake, ids, segs = three_segments(tmp_path)
    chunk_file(lake, "main", segs[2], "goals/images/front", (0, 0, 0, 0)).unlink()
    rep = Lake.open(tmp_path / "lake").verify()
    (c,) = rep.damaged_chunks
    assert (c["segment"], c["array"], c["rows"], c["episodes"]) == (segs[2], "goals/images/front", [0, 3], ids[2])
    assert {e["episode_id"] for e in rep.damaged_episodes} == set(ids[2])


def test_unreadable_segment_metadata_is_reported_and_the_rest_still_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lake, ids, segs = three_segments(tmp_path)
    session = lake.repo.writable_session("main")
    root = zarr.open_group(session.store, mode="r+")
    group = root[f"segments/{segs[0]}"]
    table = dict(group.attrs["episodes"])  # type: ignore[arg-type]
    del table["episode_id"]
    group.attrs["episodes"] = table
    session.commit("break a segment's table")
    chunk_file(lake, "main", segs[2], IMAGES, (0, 0, 0, 0)).unlink()
    rep = Lake.open(tmp_path / "lake").verify()
    assert [s["segment"] for s in rep.damaged_segments] == [segs[0]]
    assert "metadata unreadable" in rep.damaged_segments[0]["error"]
    assert rep.episodes_checked == 6  # segments 1 and 2 were still checked
    assert {e["episode_id"] for e in rep.damaged_episodes} == set(ids[2])
    capsys.readouterr()
    assert cli(["lake", "verify", "--lake", str(tmp_path / "lake")]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "damaged segments:" in out and segs[0] in out
