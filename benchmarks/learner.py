"""Learner throughput: updates/s of every algorithm in ALGOS, as a multiple of the bare encoder's cost.

    .venv/bin/python -m benchmarks.learner [--quick] [--json PATH] [--device cpu|cuda] [--algos cql,iql] [--threads N]

Batch: B = 256 rows of one 64x64 camera plus a goal image (and state, goal state), the default
encoder (DrQ conv trunk, late goal fusion), from a synthetic in-memory lake through the real
Sampler (DrQ shifts on). A few device batches are drawn before timing and cycled, so sampling is
not timed (``benchmarks.sampler`` measures it). Every algorithm runs its default config. A sequence
model (dt) gets B // K windows of K steps per update (B frames, each embedded once), from the
``SequenceSampler`` on the same lake.

The floor: one forward and backward of the bare encoder on the batch's images exactly as
``robot_rl.algos.base.encode`` runs them (s with gradients, s' without, the goal images once, shared
by both), with no head and no optimizer: what any algorithm that trains its encoder pays per
update. Each algorithm's updates alternate with floor steps on its own batch variant, so
``<algo>_vs_floor`` = (its seconds per update) / (the seconds per floor step taken between them)
holds up on a machine whose load changes; ``encoder_floor_updates_per_s`` is the goal-image floor.

Batch variants: an algorithm is built for the goal-conditioned batch unless ``BATCH_VARIANT`` names
its variant (MT-Opt: task-conditioned, task ids and no goal images); one that rejects the goal batch
(raises a ValueError, e.g. it needs task ids) gets the task-conditioned variant.
On CUDA (``--device cuda``) updates run under bf16 autocast and each timing ends with a synchronize.
Target on the 2-core CPU dev machine: ``cql_vs_floor`` <= 3 (``bcq_vs_floor`` <= 4: BCQ also trains a VAE).
On a shared machine under load use ``--threads 1``: two OpenMP workers that spin-wait for each other
can run ten times slower.

The Actionable Models speedup: ``am_speedup_vs_baseline`` = (seconds per update of the baseline
configuration) / (seconds per update of today's default configuration), the two updates
alternating on the same batches. The baseline (``--baseline`` JSON, default ``BASELINE_AM``) is the
configuration issue 13 started from: DrQ's encoder strides at 64x64 (2, 1, 1, 1) and the acting CEM
(64 samples, 2 iterations) for every TD target. Both run on today's code, so code-level gains that
help both (the critic scoring Q_1 only in CEM, the split first layer) are not in the ratio.
Target: >= 3.

Dynamics model: ``dynamics_steps_per_s`` = gradient steps per second of the model-based algorithms'
dynamics ensemble (``robot_rl.models``, default ``DynamicsConfig``: 7 members of 4x200 SiLU layers,
256 rows per member per step) on the goal batches' features from a frozen default encoder, timed in
the same run as the floor (the encoder is not in it: the model trains on precomputed features).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Callable

import torch

from benchmarks.report import report
from data_lake import Lake
from data_lake.batch import Batch
from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig
from data_lake.sequences import SequenceBatch, SequenceSampler
from data_lake.synthetic import synthetic_episode
from robot_rl.algos import ALGOS, Algorithm, encode
from robot_rl.nets import EncoderConfig, ObservationEncoder, ObservationSpec

B = 256
BASELINE_AM = {"encoder": {"conv_strides": [2, 1, 1, 1]}, "target_cem": None}
N_BATCHES = 3  # device batches drawn before timing, cycled
TASKS = ("synthetic/push", "synthetic/pick")
VARIANTS = ("goal", "task")  # tried in this order for an algorithm not in BATCH_VARIANT
BATCH_VARIANT = {"mt_opt": "task"}  # MT-Opt is the multi-task Q-function: task ids, no goals


def paired_seconds(
    update: Callable[[], object], floor_step: Callable[[], object], seconds: float, min_iters: int, sync: Callable
) -> tuple[int, float, float]:
    """Alternate one update and one floor step (at least ``min_iters`` pairs and ``seconds``), so a change
    in machine load hits both alike; returns the pairs and the total seconds of each side."""
    n, t_update, t_floor = 0, 0.0, 0.0
    while n < min_iters or t_update + t_floor < seconds:
        t0 = time.perf_counter()
        update()
        sync()
        t1 = time.perf_counter()
        floor_step()
        sync()
        t_update, t_floor, n = t_update + t1 - t0, t_floor + time.perf_counter() - t1, n + 1
    return n, t_update, t_floor


RELABEL = {
    "goal": RelabelConfig(future=0.6, final=0.1, negative=0.2, task=0.1),
    "task": RelabelConfig(future=0.0, final=0.0, negative=0.0, task=1.0),
}


def draw_batches(view, device: str) -> dict[str, tuple[list[Batch], int]]:
    """N_BATCHES device batches per variant, and the number of tasks to condition on."""
    out = {}
    for name, relabel in RELABEL.items():
        cfg = SamplerConfig(batch_size=B, relabel=relabel, augment_pad=4, seed=0)
        with Sampler(view, cfg, device=device, progress=False) as sampler:
            out[name] = [next(sampler) for _ in range(N_BATCHES)], len(sampler.tasks) if name == "task" else 0
    return out


def sequence_batches(view, variant: str, window: int, device: str) -> list[SequenceBatch]:
    """Sequence models (dt): N_BATCHES batches of B // K windows of K steps (B frames, as many as a Batch's rows)."""
    cfg = SamplerConfig(batch_size=max(B // window, 1), relabel=RELABEL[variant], augment_pad=4, seed=0)
    with SequenceSampler(view, cfg, window, device=device, progress=False) as sampler:
        return [next(sampler) for _ in range(N_BATCHES)]


def build(name: str, batches: dict[str, tuple[list[Batch], int]], device: str, autocast) -> tuple[Algorithm, str]:
    """The algorithm with its default config on the first batch variant it accepts (one update run)."""
    errors = []
    for variant in (BATCH_VARIANT[name],) if name in BATCH_VARIANT else VARIANTS:
        data, num_tasks = batches[variant]
        try:
            algo = ALGOS[name](ALGOS[name].config_class(), ObservationSpec.from_batch(data[0], num_tasks), device)
            with autocast():
                algo.update(data[0])
            return algo, variant
        except ValueError as e:
            errors.append(f"{variant}: {e}")
    raise RuntimeError(f"{name} accepts none of the batch variants {VARIANTS}: {errors}")


def am_speedup(
    data: list[Batch], baseline: dict, secs: float, min_iters: int, device: str, autocast, sync
) -> dict[str, float]:
    """Seconds per update of Actionable Models, default config vs ``baseline`` overrides, paired."""
    from robot_rl.config import from_dict

    cls = ALGOS["actionable_models"]
    spec = ObservationSpec.from_batch(data[0])
    new = cls(cls.config_class(), spec, device)
    old = cls(from_dict(cls.config_class, baseline), spec, device)
    for algo in (new, old):  # warm-up
        with autocast():
            algo.update(data[0])
    cycle_new, cycle_old = itertools.cycle(data), itertools.cycle(data)

    def step(algo: Algorithm, cycle) -> None:
        with autocast():
            algo.update(next(cycle))

    n, t_new, t_old = paired_seconds(lambda: step(new, cycle_new), lambda: step(old, cycle_old), secs, min_iters, sync)
    return {
        "am_seconds_per_update": t_new / n,
        "am_baseline_seconds_per_update": t_old / n,
        "am_speedup_vs_baseline": t_old / t_new,
    }


def dynamics_rate(data: list[Batch], secs: float, min_iters: int, device: str, autocast, sync) -> float:
    """Gradient steps/s of the default dynamics ensemble on frozen-encoder features of ``data``."""
    from robot_rl.models import DynamicsConfig, DynamicsEnsemble, dynamics_loss, make_dynamics_optimizer

    encoder = ObservationEncoder(ObservationSpec.from_batch(data[0]), EncoderConfig()).to(device).requires_grad_(False)
    with torch.no_grad():
        feats = [encoder.observation_features([b.observations, b.next_observations], b.goals) for b in data]
    x, x_next = torch.cat([f for f, _ in feats]).float(), torch.cat([n for _, n in feats]).float()  # (N, D)
    a, r = torch.cat([b.actions for b in data]), torch.cat([b.rewards for b in data])
    cfg = DynamicsConfig()
    model = DynamicsEnsemble(x.shape[1], a.shape[1], cfg).to(device)
    y = torch.cat([x_next - x, r[:, None]], 1)
    model.set_normalization(x, a, y)
    yn = model.normalize_targets(y)
    opt = make_dynamics_optimizer(model, cfg)
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        idx = torch.randint(len(x), (cfg.ensemble_size, cfg.batch_size), generator=gen, device=device)  # (K, B)
        with autocast():
            loss, _ = dynamics_loss(model, x[idx], a[idx], yn[idx], cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    sync()
    n, t0 = 0, time.perf_counter()
    while n < max(min_iters, 5) or time.perf_counter() - t0 < secs / 4:
        step()
        n += 1
    sync()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few updates each (under a minute on 2 CPU cores)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast)")
    ap.add_argument("--algos", default=None, help="comma-separated subset of ALGOS (default: all)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument(
        "--baseline",
        default=json.dumps(BASELINE_AM),
        help="Actionable Models config overrides of the baseline (JSON; default: the issue-13 starting point)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # 1 on a shared, loaded machine: idle OpenMP workers spin
    secs, min_iters = (0.0, 1) if args.quick else (8.0, 5)  # (update, floor) pairs after one warm-up update
    t_start = time.perf_counter()
    cuda = torch.device(args.device).type == "cuda"

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    lake = Lake.create(f"memory://bench-{uuid.uuid4().hex}")
    lake.append([synthetic_episode(i, length=30, size=64, task=TASKS[i % 2]) for i in range(16)])
    batches = draw_batches(lake.checkout(), args.device)

    def make_floor(variant: str) -> Callable[[], None]:
        """The floor on a batch variant: the bare encoder, forward + backward as ``encode`` runs it."""
        data, num_tasks = batches[variant]
        spec = ObservationSpec.from_batch(data[0], num_tasks)
        encoder = ObservationEncoder(spec, EncoderConfig()).to(args.device)
        cycle = itertools.cycle(data)

        def floor_step() -> None:
            encoder.zero_grad(set_to_none=True)
            with autocast():
                enc = encode(encoder, next(cycle))
                loss = enc.features.float().pow(2).mean()
            loss.backward()

        floor_step()  # warm-up
        return floor_step

    floors = {v: make_floor(v) for v in VARIANTS}
    names = list(ALGOS) if args.algos is None else args.algos.split(",")
    rates, ratios, used, floor_n, floor_s = {}, {}, {}, 0, 0.0
    for name in names:
        algo, used[name] = build(name, batches, args.device, autocast)
        window = getattr(algo.cfg, "sequence_length", 0)  # sequence models (dt) learn from K-step windows
        source = sequence_batches(lake.checkout(), used[name], window, args.device) if window else None
        data = itertools.cycle(source or batches[used[name]][0])

        def update(algo: Algorithm = algo, data=data) -> None:
            with autocast():
                algo.update(next(data))

        n, t_update, t_floor = paired_seconds(update, floors[used[name]], secs, min_iters, sync)
        rates[f"{name}_updates_per_s"], ratios[f"{name}_vs_floor"] = n / t_update, t_update / t_floor
        if used[name] == "goal":
            floor_n, floor_s = floor_n + n, floor_s + t_floor
    figs: dict[str, float] = {"encoder_floor_updates_per_s": floor_n / floor_s, **rates, **ratios}
    figs["dynamics_steps_per_s"] = dynamics_rate(batches["goal"][0], secs, min_iters, args.device, autocast, sync)
    figs |= am_speedup(batches["goal"][0], json.loads(args.baseline), secs, min_iters, args.device, autocast, sync)
    figs["batch_size"] = B
    figs["wall_s"] = time.perf_counter() - t_start
    print(
        f"learner benchmark: B={B}, 64x64 camera + goal image, default encoder, device {args.device}"
        f"{' (bf16 autocast)' if cuda else ''}, {torch.get_num_threads()} threads; batch variants "
        + ", ".join(f"{n}={v}" for n, v in used.items())
    )
    targets = {"cql_vs_floor": "<= 3", "bcq_vs_floor": "<= 4", "am_speedup_vs_baseline": ">= 3"}
    report(figs, targets, args.json)


if __name__ == "__main__":
    main()
