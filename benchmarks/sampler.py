"""Sampler throughput against the bare numpy gather (upper bound) and naive zarr random access.

    .venv/bin/python -m benchmarks.sampler [--quick] [--json PATH]

Lake: 400 episodes x 50 steps (20,000 steps) of one 64x64 camera with state and action, in 10
segments. Batch: B = 256 with observation, next observation and goal images. ``batches_per_s`` is
what the learner receives from the background thread (host batches, uint8 images); the device
copy, DrQ shifts and float conversion happen on the learner's device (``--device``, default
cpu) and are reported separately as ``device_batches_per_s``.
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np
import zarr

from benchmarks.report import report
from data_lake import Lake
from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig
from data_lake.synthetic import synthetic_episode

B = 256


def rate(fn, seconds: float, min_iters: int = 3) -> float:
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cpu", help="learner device for device_batches_per_s (cpu, cuda)")
    args = ap.parse_args()
    secs = 2.0 if args.quick else 6.0
    t_start = time.perf_counter()

    lake = Lake.create(f"memory://bench-{uuid.uuid4().hex}")
    for k in range(10):
        lake.append([synthetic_episode(40 * k + i, length=50, size=64) for i in range(40)])
    view = lake.checkout()
    relabel = RelabelConfig(future=0.6, final=0.1, negative=0.2, commanded=0.1, task=0.0)
    cfg = SamplerConfig(batch_size=B, relabel=relabel, augment_pad=4, seed=0)

    t0 = time.perf_counter()
    sampler = Sampler(view, cfg, progress=False)
    load_s = time.perf_counter() - t0
    assert len(sampler.pool.ep_of) >= 20_000

    q = sampler  # through the background thread, host batches
    q.__next__()  # start the thread
    assert q._queue is not None
    batches_per_s = rate(lambda: q._queue.get(), secs)
    sampler.close()
    import torch

    on_device = Sampler(view, cfg, device=args.device, progress=False)

    def device_batch() -> None:
        b = next(on_device)
        if b.actions.is_cuda:
            torch.cuda.synchronize()

    device_batch()
    device_batches_per_s = rate(device_batch, secs)
    on_device.close()

    images = sampler.pool.images["front"]
    rng = np.random.default_rng(0)

    def gather() -> None:
        idx = rng.integers(0, len(images) - 1, B)
        _ = images[idx], images[idx + 1], images[rng.integers(0, len(images), B)]

    gather_per_s = rate(gather, secs)

    stream = Sampler(
        view, SamplerConfig(batch_size=B, relabel=relabel, streaming_segments=4, swap_every=20), progress=False
    )
    stream.__next__()

    def streamed() -> None:
        assert stream._queue is not None  # the first batch started the streaming thread
        stream._queue.get()

    streaming_per_s = rate(streamed, secs)
    stream.close()

    # naive: random access into the chunked zarr arrays of the lake, segment by segment
    seg_arrays: list[zarr.Array] = []
    for n in view.segment_names():
        a = view._segment(n)["steps/images/front"]
        assert isinstance(a, zarr.Array)
        seg_arrays.append(a)
    sizes = np.array([a.shape[0] for a in seg_arrays])

    def naive() -> None:
        for _ in range(3):  # obs, next obs, goal
            seg = rng.integers(0, len(seg_arrays), B)
            for s in np.unique(seg):
                rows = np.sort(rng.integers(0, sizes[s] - 1, int(np.sum(seg == s))))
                a = seg_arrays[s]
                assert isinstance(a, zarr.Array)
                a.get_orthogonal_selection((rows, slice(None), slice(None), slice(None)))

    naive_per_s = rate(naive, secs, min_iters=2)

    figs = {
        "batches_per_s": batches_per_s,
        "numpy_gather_batches_per_s": gather_per_s,
        "vs_gather": batches_per_s / gather_per_s,
        "naive_zarr_batches_per_s": naive_per_s,
        "vs_naive": batches_per_s / naive_per_s,
        "streaming_batches_per_s": streaming_per_s,
        "device_batches_per_s": device_batches_per_s,
        "load_seconds": load_s,
        "steps": len(sampler.pool.ep_of),
        "wall_s": time.perf_counter() - t_start,
    }
    print(
        f"sampler benchmark: B={B}, 64x64 obs + next obs + goal images, {figs['steps']} steps in RAM, "
        f"device {args.device}"
    )
    targets = {"vs_gather": ">= 0.5", "vs_naive": ">= 30"}
    report(figs, targets, args.json)


if __name__ == "__main__":
    main()
