"""Past one machine: the lake on S3 against a local disk, concurrent writers on S3, Ray against
processes for collection, and what a commit costs as a lake's history grows.

    .venv/bin/python -m benchmarks.scale [--quick] [--json PATH] [--commits N] [--skip-collect]

The S3 server is moto's server mode on 127.0.0.1 (started here; dummy credentials), so "S3" is
loopback HTTP plus moto's Python request handling: the ratios say what the object-store path
costs in this process, not what a real bucket gives.

- ``ingest_mb_s_local`` / ``_s3``: ``Lake.append`` of synthetic 64x64 image episodes in one commit;
  ``read_mb_s_local`` / ``_s3``: reading them all back (``LakeView.load``); and their ratios.
- ``s3_commits_per_s_<k>w``: k writer processes (1, 2, 4) each appending small episodes one commit
  at a time to one S3 lake, with no lock (Icechunk's conflict detection, rebase and retry);
  ``s3_conflict_retries_<k>w`` counts the commits that lost a race and were redone.
- ``collect_overhead_process_<k>w`` / ``_ray_<k>w``: 1 - collect frames/s over the raw
  step+render loop's frames/s x k (``benchmarks/collect.py``), for k = 1, 2 workers.
- ``commit_ms_segments_<n>``: the median latency of 10 appends (one commit each, durable) of a
  two-step episode to a local lake that holds n commits and n segments (every append adds one);
  ``--segments`` sets the largest n (1,000; 100 with ``--quick``).
- ``commit_ms_history_<n>``: the same once the history holds n commits, with ``Lake.compact``
  after every 100 appends (20 with ``--quick``), so the lake never holds more than 101 segments
  and only the history grows; ``--commits`` sets the largest n (10,000; 100 with ``--quick``).
- ``commit_growth_ms_per_1k_segments`` / ``_commits``: the slopes of straight-line fits.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks.report import report
from data_lake import Lake
from data_lake.episode import Episode
from data_lake.synthetic import synthetic_episode

REGION = "us-east-1"


@contextlib.contextmanager
def moto_server(**env: str) -> Iterator[str]:
    """A local S3 server (moto's server mode) on a free port of 127.0.0.1, ``env`` added to its
    environment; yields its endpoint URL (the tests use it too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start on port {port} (exit code {proc.poll()})")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def s3_lake_uri(endpoint: str) -> str:
    import boto3

    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/lake?endpoint_url={endpoint}"


def image_episodes(n: int, length: int) -> list[Episode]:
    return [synthetic_episode(s, length=length, size=64, noise=2.0) for s in range(n)]


def throughput(uri: str, episodes: list[Episode]) -> tuple[float, float]:
    """(ingest MB/s, read MB/s) of the episodes' image bytes through a fresh lake at ``uri``."""
    mb = sum(e.steps["images/front"].nbytes for e in episodes) / 1e6
    lake = Lake.create(uri)
    t0 = time.perf_counter()
    lake.append(episodes)
    ingest = mb / (time.perf_counter() - t0)
    view = Lake.open(uri).checkout("main")
    t0 = time.perf_counter()
    data = view.load(["images/front"], progress=False)
    read = mb / (time.perf_counter() - t0)
    assert len(data.steps["images/front"]) == sum(len(e) for e in episodes)
    return ingest, read


def _writer(args: tuple[str, int, int]) -> tuple[int, int]:
    """One writer process: ``commits`` appends of one small episode each; (commits, conflict retries)."""
    uri, seed, commits = args
    lake = Lake.open(uri)
    retries = 0
    for k in range(commits):
        res = lake.append([synthetic_episode(seed * 10_000 + k, length=4, size=8)])
        retries += res.conflict_retries
    return commits, retries


def s3_writers(endpoint: str, writers: int, commits: int) -> tuple[float, int]:
    """(commits/s, conflict retries) of ``writers`` processes committing to one S3 lake at once."""
    uri = s3_lake_uri(endpoint)
    Lake.create(uri).append([synthetic_episode(999_999, length=4, size=8)])  # the schema exists
    with mp.get_context("spawn").Pool(writers) as pool:
        pool.map(len, [[]] * writers)  # the workers are up before the clock starts
        t0 = time.perf_counter()
        done = pool.map(_writer, [(uri, w + 1, commits) for w in range(writers)])
        wall = time.perf_counter() - t0
    n = len(Lake.open(uri).checkout("main").episode_ids())
    assert n == 1 + writers * commits, (n, writers, commits)  # nothing lost, nothing twice
    return sum(c for c, _ in done) / wall, sum(r for _, r in done)


def commit_latency(root: Path, marks: list[int], compact_every: int = 0, probe: int = 10) -> dict[int, float]:
    """Median ms of ``probe`` appends (one commit each, durable) once the lake's history holds each
    mark of commits. ``compact_every`` = 0: every commit adds a segment, so segments grow with the
    commits; k > 0: ``Lake.compact`` after every k appends keeps at most k + 1 segments, so only
    the history grows."""
    os.environ["ROBOT_RL_LAKE_FSYNC"] = "1"
    lake = Lake.create(str(root / f"history-{compact_every}"))
    out: dict[int, float] = {}
    seed = commits = 0
    t_report = time.perf_counter()

    def append() -> float:
        nonlocal seed, commits
        t0 = time.perf_counter()
        lake.append([synthetic_episode(seed, length=2, size=4)])
        seed, commits = seed + 1, commits + 1
        if compact_every and seed % compact_every == 0:
            commits += lake.compact().snapshot_id is not None
        return time.perf_counter() - t0

    for mark in marks:
        while commits < mark:
            append()
            if time.perf_counter() - t_report > 60:
                print(f"  ... {commits} commits", flush=True)
                t_report = time.perf_counter()
        out[mark] = 1000 * float(np.median([append() for _ in range(probe)]))
        print(f"  commit latency at {mark} commits (compact every {compact_every}): {out[mark]:.1f} ms", flush=True)
    return out


def growth_ms_per_1k(latency: dict[int, float]) -> float:
    """The slope of a straight-line fit of latency (ms) against the mark, per 1,000."""
    xs, ys = np.array(list(latency), float), np.array(list(latency.values()))
    return 1000 * float(np.polyfit(xs, ys, 1)[0])


def collect_overheads(quick: bool) -> dict[str, float]:
    from benchmarks.collect import collect_fps, raw_fps
    from tasks import ray_backend

    task, n = "tabletop/push_red_to_pad", 6 if quick else 20
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-collect-"))
    figs: dict[str, float] = {}
    try:
        raw = raw_fps(task, n)
        for w in (1, 2):
            figs[f"collect_overhead_process_{w}w"] = 1 - collect_fps(task, n * w, w, workdir) / (raw * w)
        with ray_backend.session(None, 2):
            for w in (1, 2):
                figs[f"collect_overhead_ray_{w}w"] = 1 - collect_fps(task, n * w, w, workdir, "ray") / (raw * w)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return figs


def s3_figures(quick: bool, work: Path) -> dict[str, float]:
    """Local against S3 ingest and read MB/s, and commits/s with 1, 2 and 4 writers on S3."""
    figs: dict[str, float] = {}
    eps = image_episodes(6 if quick else 40, 50)
    os.environ.update(  # dummy credentials for the local server, in this process only
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    with moto_server() as endpoint:
        figs["ingest_mb_s_local"], figs["read_mb_s_local"] = throughput(str(work / "local"), eps)
        figs["ingest_mb_s_s3"], figs["read_mb_s_s3"] = throughput(s3_lake_uri(endpoint), eps)
        figs["ingest_s3_vs_local"] = figs["ingest_mb_s_s3"] / figs["ingest_mb_s_local"]
        figs["read_s3_vs_local"] = figs["read_mb_s_s3"] / figs["read_mb_s_local"]
        for w in (1, 2, 4):
            rate, retries = s3_writers(endpoint, w, 3 if quick else 10)
            figs[f"s3_commits_per_s_{w}w"], figs[f"s3_conflict_retries_{w}w"] = rate, retries
    return figs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, commit latency up to 100 commits (< 60 s)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--commits", type=int, default=None, help="the largest history measured (default 10,000)")
    ap.add_argument("--segments", type=int, default=None, help="the most segments measured (default 1,000)")
    ap.add_argument("--skip-collect", action="store_true", help="leave out the Ray/process collection figures")
    ap.add_argument("--latency-only", action="store_true", help="only the commit-latency curves")
    args = ap.parse_args()
    t0 = time.perf_counter()
    largest = args.commits or (100 if args.quick else 10_000)
    marks = [m for m in (10, 100, 1_000, 10_000, 100_000) if m <= largest]
    most = args.segments or (100 if args.quick else 1_000)
    seg_marks = [m for m in (10, 100, 300, 1_000, 3_000, 10_000) if m <= most]
    figs: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        if not args.latency_only:
            figs |= s3_figures(args.quick, work)
            if not args.skip_collect:
                figs |= collect_overheads(args.quick)
        by_segments = commit_latency(work, seg_marks)
        by_history = commit_latency(work, marks, compact_every=20 if args.quick else 100)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for mark, ms in by_segments.items():
        figs[f"commit_ms_segments_{mark}"] = ms
    for mark, ms in by_history.items():
        figs[f"commit_ms_history_{mark}"] = ms
    if len(by_segments) > 1:
        figs["commit_growth_ms_per_1k_segments"] = growth_ms_per_1k(by_segments)
    if len(by_history) > 1:
        figs["commit_growth_ms_per_1k_commits"] = growth_ms_per_1k(by_history)
    figs["wall_s"] = time.perf_counter() - t0
    print(
        f"scale benchmark: moto S3 on loopback, {os.cpu_count()} cores; commit latency up to {most} segments "
        f"and {largest} commits"
    )
    report(figs, {}, args.json)


if __name__ == "__main__":
    main()
