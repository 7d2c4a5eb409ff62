"""The lake on object storage, against a local S3 server (moto's server mode, docs/scaling.md).

- The server does what Icechunk's commits rely on: conditional PUTs (``If-None-Match: *``,
  ``If-Match: <etag>``) answer 412, and of two sessions committing on one tip one gets ConflictError.
- ``s3://bucket/prefix?endpoint_url=...`` needs no endpoint env var; missing or rejected
  credentials are one ``error:`` line naming the bucket and what to set.
- Concurrent writers (separate processes, no lock) lose and duplicate nothing; a pinned reader
  reads the same bytes while others write; a writer SIGKILLed mid-commit leaves a lake that verifies.
- ``robot-rl lake copy`` local -> S3 -> local keeps snapshot ids, refs and episodes.

The server runs as a subprocess on 127.0.0.1 (a free port) for the module; every test gets a
fresh bucket. Credentials are dummy values in the environment, set for these tests only.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("moto.server", reason="the local S3 server needs moto (pip install 'moto[s3]' flask-cors)")
pytest.importorskip("flask_cors", reason="moto's server mode needs flask-cors (pip install flask-cors)")
import boto3
import botocore.exceptions
import icechunk as ic
import zarr

from benchmarks.scale import moto_server
from data_lake import Lake
from data_lake.storage import UnsupportedURIError, parse_uri
from data_lake.synthetic import synthetic_episode
from robot_rl.cli import main as cli

REGION = "us-east-1"
SPAWN = mp.get_context("spawn")
JOIN_S = 240.0  # for a spawned writer on a loaded 2-core machine


def episode(seed: int) -> Any:
    return synthetic_episode(seed, length=5, size=8, task=("tabletop/push", "tabletop/lift")[seed % 2])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    empty = tmp_path_factory.mktemp("aws") / "empty"
    empty.write_text("")
    with pytest.MonkeyPatch.context() as mp_env:
        for k in list(os.environ):
            if k.startswith("AWS_"):
                mp_env.delenv(k)
        mp_env.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp_env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp_env.setenv("AWS_DEFAULT_REGION", REGION)
        mp_env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))  # never the developer's ~/.aws
        mp_env.setenv("AWS_CONFIG_FILE", str(empty))
        with moto_server() as url:
            yield url


@pytest.fixture
def uri(endpoint: str) -> str:
    """A lake URI in a fresh bucket; the endpoint is in the URI (no AWS_ENDPOINT_URL needed)."""
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/lakes/a?endpoint_url={endpoint}"


def _storage(uri: str) -> ic.Storage:
    from data_lake.storage import make_storage

    return make_storage(parse_uri(uri), create=False)


# ---------------------------------------------------------------------------- the server
def test_server_enforces_conditional_puts(endpoint: str, uri: str) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
    bucket = parse_uri(uri).bucket
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"1")["ETag"]
    for kwargs in ({"IfNoneMatch": "*"}, {"IfMatch": '"0123456789abcdef0123456789abcdef"'}):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.put_object(Bucket=bucket, Key="k", Body=b"2", **kwargs)
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412, kwargs
    s3.put_object(Bucket=bucket, Key="k", Body=b"3", IfMatch=etag)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"3"

    repo = ic.Repository.create(_storage(uri))
    a, b = repo.writable_session("main"), ic.Repository.open(_storage(uri)).writable_session("main")
    zarr.group(store=a.store).attrs["who"] = "a"
    zarr.group(store=b.store).attrs["who"] = "b"
    first = a.commit("a")
    with pytest.raises(ic.ConflictError):
        b.commit("b")
    assert repo.lookup_branch("main") == first


# ---------------------------------------------------------------------------- options and errors
def test_s3_uri_options() -> None:
    loc = parse_uri("s3://bkt/p/q?endpoint_url=http://127.0.0.1:9000&allow_http=1&region=eu-west-1")
    assert (loc.path, loc.bucket, loc.endpoint_url, loc.allow_http, loc.region) == (
        "bkt/p/q",
        "bkt",
        "http://127.0.0.1:9000",
        True,
        "eu-west-1",
    )
    assert parse_uri("s3://bkt/p").endpoint_url is None
    with pytest.raises(UnsupportedURIError, match="never read from the URI"):
        parse_uri("s3://bkt/p?aws_secret_access_key=x")
    with pytest.raises(UnsupportedURIError, match="unknown S3 URI option 'endpoint'"):
        parse_uri("s3://bkt/p?endpoint=http://x")
    with pytest.raises(UnsupportedURIError, match="allow_http must be"):
        parse_uri("s3://bkt/p?allow_http=maybe")


def test_create_append_read_with_endpoint_in_uri(uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert "AWS_ENDPOINT_URL" not in os.environ and "AWS_ENDPOINT_URL_S3" not in os.environ
    lake = Lake.create(uri)
    eps = [episode(s) for s in range(3)]
    lake.append(eps)
    again = Lake.open(uri).checkout("main")
    assert len(again) == 3
    got = again.read_episode(again.episode_ids()[0])
    assert any(np.array_equal(got.steps["action"], e.steps["action"]) for e in eps)
    assert cli(["lake", "info", "--lake", uri]) == 0
    assert "episodes  3" in capsys.readouterr().out


def test_endpoint_from_env(uri: str, endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    plain = uri.partition("?")[0]
    Lake.create(plain).append([episode(0)])
    assert len(Lake.open(plain).checkout()) == 1


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_missing_credentials_is_one_clear_error(
    uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert cli(["lake", "info", "--lake", uri]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert parse_uri(uri).bucket in line and "AWS_ACCESS_KEY_ID" in line and "AWS_SECRET_ACCESS_KEY" in line


def test_wrong_credentials_is_one_clear_error(
    endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as strict:  # checks every request's access key
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAKEY000000000")
        uri = f"s3://some-bucket/lake?endpoint_url={strict}"
        assert cli(["lake", "info", "--lake", uri]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "'some-bucket'" in line and "rejected" in line and "AWS_ACCESS_KEY_ID" in line
    assert "AKIANOTAKEY" not in line and "testing" not in line  # no credential is ever printed


# ---------------------------------------------------------------------------- concurrent writers
def test_backoff_is_bounded_and_jittered() -> None:
    from data_lake.lake import BACKOFF_BASE_S, BACKOFF_MAX_S, backoff_s

    for attempt in range(12):
        waits = [backoff_s(attempt) for _ in range(50)]
        cap = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt)
        assert all(0.0 <= w <= cap for w in waits) and len(set(waits)) > 1, (attempt, cap)
    assert max(backoff_s(30) for _ in range(200)) > BACKOFF_MAX_S / 2  # grows to the cap, never past it


def _append_each(uri: str, seeds: list[int], written: Any, out: Any) -> None:
    """Append ``seeds`` one per commit. The first append of every writer waits, its episode
    written, until all writers have written theirs: the first commits race for certain. Reports
    (added, skipped) per append and how often this writer backed off after a conflict."""
    import data_lake.lake as lake_module

    real_lock, real_backoff = lake_module.commit_lock, lake_module.backoff_s
    first, backoffs = [True], [0]

    def lock_after_all_wrote(loc: Any, *args: Any, **kwargs: Any) -> Any:
        if first[0]:
            first[0] = False
            written.wait(JOIN_S)
        return real_lock(loc, *args, **kwargs)

    def counted_backoff(attempt: int) -> float:
        backoffs[0] += 1
        return float(real_backoff(attempt))

    lake_module.commit_lock = lock_after_all_wrote  # type: ignore[assignment]
    lake_module.backoff_s = counted_backoff
    lake = Lake.open(uri)
    results = [lake.append([episode(s)]) for s in seeds]
    out.put(([(r.added, r.skipped_duplicates) for r in results], backoffs[0]))


def _run_writers(uri: str, seed_lists: list[list[int]]) -> list[list[tuple[int, int]]]:
    written, out = SPAWN.Barrier(len(seed_lists)), SPAWN.Queue()
    procs = [SPAWN.Process(target=_append_each, args=(uri, seeds, written, out)) for seeds in seed_lists]
    for p in procs:
        p.start()
    reports = [out.get(timeout=JOIN_S) for _ in procs]
    for p in procs:
        p.join(JOIN_S)
        assert p.exitcode == 0
    print(f"{len(procs)} writers backed off {sum(b for _, b in reports)} times after conflicts")
    return [r for r, _ in reports]


def test_four_writers_lose_and_duplicate_nothing(uri: str) -> None:
    lake = Lake.create(uri)
    lake.append([episode(1000)])  # fixes the schema, so the writers race only on the branch tip
    seeds = [[100 * w + i for i in range(10)] for w in range(4)]
    results = _run_writers(uri, seeds)
    assert all(r == [(1, 0)] * 10 for r in results), results
    view = lake.checkout("main")
    ids = view.episode_ids()
    assert len(ids) == 41 and len(set(ids)) == 41
    log = lake.log()
    assert sum(c.operation == "append" for c in log) == 41
    totals = [c.episodes_total for c in log if c.operation == "append"]
    assert totals == list(range(41, 0, -1))  # every commit saw all the commits before it


def test_same_episodes_from_two_writers_are_stored_once(uri: str) -> None:
    lake = Lake.create(uri)
    lake.append([episode(1000)])
    results = _run_writers(uri, [list(range(5)), list(range(5))])
    assert sorted(r[0] for r in results) == [(0, 1), (1, 0)], results  # episode 0: written by both, stored once
    assert sum(a for r in results for a, _ in r) == 5, results
    ids = lake.checkout("main").episode_ids()
    assert len(ids) == 6 and len(set(ids)) == 6


# ---------------------------------------------------------------------------- pinned reads
def _append_seeds(uri: str, seeds: list[int]) -> None:
    Lake.open(uri).append([episode(s) for s in seeds])


def test_pinned_reader_is_bit_stable(uri: str) -> None:
    lake = Lake.create(uri)
    lake.append([episode(s) for s in range(4)])
    snap = lake.resolve("main")
    view = lake.checkout(snap)
    before = view.load(progress=False)
    p = SPAWN.Process(target=_append_seeds, args=(uri, list(range(10, 14))))
    p.start()
    p.join(JOIN_S)
    assert p.exitcode == 0
    assert len(lake.checkout("main")) == 8
    for again in (view, Lake.open(uri).checkout(snap)):
        after = again.load(progress=False)
        assert sorted(after.steps) == sorted(before.steps)
        for k, v in before.steps.items():
            assert after.steps[k].dtype == v.dtype and after.steps[k].tobytes() == v.tobytes(), k


# ---------------------------------------------------------------------------- crash
def _append_forever(uri: str, done: Any, committing: Any) -> None:
    """Append two episodes per commit until killed; from the fourth commit on, ``committing`` is
    set just before Icechunk's commit starts writing (the parent kills this process then)."""
    real_commit = ic.Session.commit

    def announced_commit(self: ic.Session, *args: Any, **kwargs: Any) -> Any:
        if done.value >= 3:
            committing.value = 1
        return real_commit(self, *args, **kwargs)

    ic.Session.commit = announced_commit  # type: ignore[method-assign]
    lake = Lake.open(uri)
    for s in range(10_000):
        lake.append([episode(s), episode(s + 50_000)])
        done.value = s + 1


def test_sigkill_mid_commit_leaves_a_consistent_lake(uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    Lake.create(uri)
    done, committing = SPAWN.Value("i", 0), SPAWN.Value("i", 0)
    p = SPAWN.Process(target=_append_forever, args=(uri, done, committing))
    p.start()
    deadline = time.monotonic() + JOIN_S
    while not committing.value and p.is_alive() and time.monotonic() < deadline:
        time.sleep(0.0005)
    assert committing.value, f"the writer did not reach its fourth commit (exit code {p.exitcode})"
    p.kill()  # SIGKILL, while Icechunk writes the commit's objects and moves the branch
    p.join(30)
    n_done = done.value
    assert cli(["lake", "verify", "--lake", uri]) == 0
    assert "OK" in capsys.readouterr().out
    lake = Lake.open(uri)
    view = lake.checkout("main")
    assert len(view) in (2 * n_done, 2 * n_done + 2), (len(view), n_done)  # whole appends only
    for eid in view.episode_ids():
        view.read_episode(eid)
    lake.append([episode(99_999)])  # no lock or half-commit is left behind to block writers
    assert len(lake.checkout("main")) == len(view) + 1


# ---------------------------------------------------------------------------- copy
def _state(lake: Lake) -> dict[str, Any]:
    return {
        "branches": {b: lake.resolve(b) for b in lake.branches()},
        "tags": {t: lake.resolve(t) for t in lake.tags()},
        "log": {b: [c.snapshot_id for c in lake.log(b)] for b in lake.branches()},
        "episodes": sorted(lake.checkout("main").episode_ids()),
    }


def test_copy_local_to_s3_and_back(uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    lake = Lake.create(src)
    lake.append([episode(0), episode(1)])
    lake.tag("v1")
    lake.branch("exp/a")
    lake.append([episode(2)], branch="exp/a")
    lake.append([episode(3)])
    want = _state(lake)

    assert cli(["lake", "copy", str(src), uri]) == 0
    assert "copied" in capsys.readouterr().out
    assert _state(Lake.open(uri)) == want
    back = tmp_path / "back"
    assert cli(["lake", "copy", uri, str(back)]) == 0
    assert _state(Lake.open(back)) == want
    assert cli(["lake", "verify", "--lake", str(back), "--ref", "exp/a"]) == 0
    capsys.readouterr()

    assert cli(["lake", "copy", str(src), uri]) == 2  # never into a non-empty destination
    assert "not empty" in _one_error_line(capsys.readouterr().err)
    assert cli(["lake", "copy", uri, str(back)]) == 2
    assert "not an empty directory" in _one_error_line(capsys.readouterr().err)
    Lake.open(back).append([episode(4)])  # the copy is a working lake


# ---------------------------------------------------------------------------- the flywheel on S3
def _sibling(uri: str, name: str) -> str:
    """Another lake in the same bucket (``.../lakes/<name>?endpoint_url=...``)."""
    path, _, query = uri.partition("?")
    return f"{path.rsplit('/', 1)[0]}/{name}?{query}"


def test_collect_ingest_and_sampling_against_s3(uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``robot-rl collect`` and ``lake ingest`` write S3 lakes; the sampler reads one, in memory and
    streaming segment by segment, and gives exactly the batches it gives from a local copy."""
    import yaml

    from benchmarks.ingest import MAPPING, write_recording
    from data_lake.sampler import Sampler, SamplerConfig
    from tasks.collect import CollectConfig, collect

    res = collect(
        CollectConfig(
            task="tabletop/reach_red",
            episodes=3,
            lake=uri,
            image_size=16,
            cameras=("front",),
            max_steps=6,
            batch_episodes=1,
            progress=False,
        )
    )
    assert (res.added, len(res.commits)) == (3, 3)
    assert len(Lake.open(uri).checkout("main").episode_ids()) == 3

    log = tmp_path / "run.mcap"
    write_recording(log, 90)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(yaml.safe_dump(MAPPING))
    logs = _sibling(uri, "logs")
    assert cli(["lake", "init", "--lake", logs]) == 0
    assert cli(["lake", "ingest", "--lake", logs, "--mapping", str(mapping), "-q", str(log)]) == 0
    (ep,) = Lake.open(logs).checkout("main").iter_episodes()
    assert ep.steps["images/front"].shape == (90, 64, 64, 3)
    capsys.readouterr()

    local = str(tmp_path / "copy")
    assert cli(["lake", "copy", uri, local]) == 0
    cfg = SamplerConfig(batch_size=6, cameras=("front",), seed=3)
    batches = {}
    for name, where in (("s3", uri), ("local", local)):
        s = Sampler(Lake.open(where).checkout("main"), cfg, progress=False)
        batches[name] = [s.sample_host() for _ in range(3)]
        s.close()
    for a, b in zip(batches["s3"], batches["local"], strict=True):
        np.testing.assert_array_equal(a.observations.images["front"], b.observations.images["front"])
        np.testing.assert_array_equal(a.actions, b.actions)
    streaming_cfg = SamplerConfig(batch_size=6, cameras=("front",), streaming_segments=2, swap_every=1)
    streaming = Sampler(Lake.open(uri).checkout("main"), streaming_cfg, progress=False)
    for _ in range(5):  # more swaps than segments: every segment is fetched from the bucket in turn
        assert streaming.sample_host().observations.images["front"].shape[0] == 6
    streaming.close()


def test_two_node_torchrun_trains_from_an_s3_lake(uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``torchrun --nnodes 2 --rdzv-backend c10d``: two launchers, one process each, meet at one
    rendezvous (as two machines would) and train from the same S3 lake (gloo); each rank samples
    its own share and the parameters stay identical (docs/scaling.md)."""
    local = tmp_path / "lake"
    lake = Lake.create(str(local))
    lake.append([synthetic_episode(s, length=12, size=16, task=("t/a", "t/b")[s % 2]) for s in range(8)])
    lake.tag("v1")
    assert cli(["lake", "copy", str(local), uri]) == 0
    capsys.readouterr()
    run = tmp_path / "ddp"
    port = _free_port()
    root = Path(__file__).resolve().parent.parent

    def launcher(node: int) -> subprocess.Popen[str]:
        cmd = [
            str(Path(sys.executable).parent / "torchrun"),
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--node-rank={node}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=robot-rl-test",
            "-m",
            "robot_rl.pretrain",
            "algo=iql",
            "obs=state",
            "task=single_task",
            "obs.scene_state=true",
            f"lake.uri='{uri}'",  # quoted: Hydra reads '=' in an unquoted value as a second override
            "lake.ref=tag:v1",
            "steps=6",
            "batch_size=8",
            "save_every=3",
            f"run_dir={run}",
            "progress=false",
            "algo.hidden=[16,16]",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
        return subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    nodes = [launcher(0), launcher(1)]
    outs = [p.communicate(timeout=JOIN_S)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(o[-3000:] for o in outs)
    import json

    ranks = json.loads((run / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and [r["step"] for r in ranks["ranks"]] == [6, 6]
    assert ranks["ranks"][0]["digest"] == ranks["ranks"][1]["digest"]
    assert json.loads((run / "run.json").read_text())["lake"]["uri"] == uri
