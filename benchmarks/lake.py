"""Lake throughput: append (ingest) and full read into memory, against raw numpy I/O on the same disk.

    .venv/bin/python -m benchmarks.lake [--quick] [--json PATH] [--dir DIR]

Episodes are 64x64x3 image episodes of length 50 with state and action (``data_lake.synthetic``:
flat-shaded blocks on a shaded table, like a simple render), plus a run with camera noise
(sigma = 3 grey levels) for the compression ratio of real-camera-like frames. Figures are MB/s of
raw frame bytes. Baselines in the same run: ``numpy.save`` / ``numpy.load`` of the same frames.
Ingest is measured with the commit's fsyncs (the default: every file a commit references is on
disk before its branch moves) and without them (``Lake.durable = False``), so their cost shows as
``fsync_slowdown``; ``small_commit_ms`` is the time of a one-episode commit, both ways.
Targets on the 2-core dev machine: ingest >= 100 MB/s (with fsync), read >= 500 MB/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import report
from data_lake import Lake
from data_lake.synthetic import synthetic_episode
from data_lake.validate import validate_episode


def _frames_bytes(eps: list) -> int:
    return sum(e.steps["images/front"].nbytes for e in eps)


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(quick: bool, workdir: Path) -> dict[str, float]:
    n = 120 if quick else 400
    repeats = 2 if quick else 3
    eps = [synthetic_episode(s, length=50, size=64) for s in range(n)]
    frame_mb = _frames_bytes(eps) / 1e6
    frames = np.concatenate([e.steps["images/front"] for e in eps])

    # baseline: raw numpy write/read of the same frame bytes on the same disk
    def np_write() -> None:
        np.save(workdir / "raw.npy", frames)

    raw_write_s = _best(np_write, repeats)
    raw_read_s = _best(lambda: np.load(workdir / "raw.npy"), repeats)

    # validation + hashing alone (part of every append)
    t0 = time.perf_counter()
    for e in eps:
        validate_episode(e)
        _ = e.episode_id
    check_s = time.perf_counter() - t0

    ingest_times: list[float] = []
    nosync_times: list[float] = []
    read_times: list[float] = []
    stored = 0
    for r in range(repeats):
        for durable, times in ((True, ingest_times), (False, nosync_times)):
            path = workdir / f"lake{r}{'' if durable else '-nofsync'}"
            lake = Lake.create(path)
            lake.durable = durable  # fsync before the branch moves (the default), or not: its cost
            t0 = time.perf_counter()
            res = lake.append(eps)
            times.append(time.perf_counter() - t0)
            assert res.added == n
            if durable:
                stored = Lake.open(path).repo.chunk_storage_stats().native_bytes
            if r or not durable:
                shutil.rmtree(path)

    # small commits (one episode each), where a commit's fixed costs (and its fsyncs) dominate
    small: dict[bool, float] = {}
    for durable in (True, False):
        lake = Lake.create(workdir / f"small-{durable}")
        lake.durable = durable
        k = 6 if quick else 20
        t0 = time.perf_counter()
        for e in eps[:k]:
            lake.append([e])
        small[durable] = (time.perf_counter() - t0) / k
    # full read of a pinned snapshot into memory: a warm-up, then the best of `repeats + 1`
    view = Lake.open(workdir / "lake0").checkout("main")
    for r in range(repeats + 2):
        t0 = time.perf_counter()
        data = view.load(progress=False)
        if r:
            read_times.append(time.perf_counter() - t0)
        assert data.steps["images/front"].shape == frames.shape
        del data

    # compression of real-camera-like frames (sensor noise)
    noisy = [synthetic_episode(s, length=50, size=64, noise=3.0) for s in range(min(n, 60))]
    lake = Lake.create(workdir / "noisy")
    lake.append(noisy)
    noisy_raw = sum(sum(v.nbytes for v in e.arrays().values()) for e in noisy)
    noisy_ratio = noisy_raw / lake.repo.chunk_storage_stats().native_bytes
    total_raw = sum(sum(v.nbytes for v in e.arrays().values()) for e in eps)

    ingest_s, read_s = min(ingest_times), min(read_times)
    return {
        "episodes": n,
        "frame_mb": round(frame_mb, 1),
        "ingest_mb_s": frame_mb / ingest_s,
        "ingest_nofsync_mb_s": frame_mb / min(nosync_times),
        "fsync_slowdown": ingest_s / min(nosync_times),
        "small_commit_ms": 1000 * small[True],
        "small_commit_nofsync_ms": 1000 * small[False],
        "raw_write_mb_s": frame_mb / raw_write_s,
        "ingest_vs_raw": raw_write_s / ingest_s,
        "check_hash_mb_s": frame_mb / check_s,
        "read_mb_s": frame_mb / read_s,
        "raw_read_mb_s": frame_mb / raw_read_s,
        "read_vs_raw": raw_read_s / read_s,
        "compression_ratio": total_raw / stored,
        "compression_ratio_noisy": noisy_ratio,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer episodes and repeats (< 60 s)")
    ap.add_argument("--json", default=None, help="write the figures as flat JSON here")
    ap.add_argument("--dir", default=None, help="work directory on the disk to measure (default: a temp dir)")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-lake-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        figs = run(args.quick, workdir)
        figs["wall_s"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"lake benchmark: {figs['episodes']} episodes x 50 steps of 64x64x3 ({figs['frame_mb']} MB of frames), "
        f"{os.cpu_count()} cores"
    )
    targets = {"ingest_mb_s": ">= 100", "read_mb_s": ">= 500"}
    report(figs, targets, args.json, skip=("episodes", "frame_mb"))


if __name__ == "__main__":
    main()
