"""CEM action-selection latency against a single Q forward pass on the same batch.

    .venv/bin/python -m benchmarks.cem [--quick] [--json PATH] [--device cpu|cuda] [--threads N]

Model: Actionable Models with its default config (default encoder: DrQ conv trunk, late goal fusion;
critic ensemble of 2 x (256, 256); CEM N = 64, M = 6, I = 2) on the tabletop's shapes: one 64x64
camera, 8-d state, a 64x64 goal image and 4-d actions. Random weights: latency does not depend on them.

- ``cem_ms_b1``, ``cem_ms_b64``: ``algo.act`` (deterministic) on 1 and 64 states: encode the observation
  and goal once, then N x I critic evaluations per state on the cached embedding.
- ``q_forward_ms_b64``: one Q(s, a, g) for 64 rows: the same encoding plus one critic call.
- ``cem_head_ms_b64``: CEM alone on cached embeddings of 64 states (what the targets pay per update).
- ``cem_vs_q_forward_b64`` = cem_ms_b64 / q_forward_ms_b64: the price of acting by CEM; encoding is
  computed once either way, so it stays far below the N x I = 128 of re-encoding per sample.
Each figure is the median over timed repetitions (CUDA: synchronized).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.report import report
from data_lake.batch import Observation
from robot_rl.algos import ALGOS, ActionableModelsConfig
from robot_rl.algos.qtopt import cem_on_critic
from robot_rl.nets import ObservationSpec

SIZE, STATE, ACTION = 64, 8, 4  # the tabletop's camera size, state and action dimensions


def median_ms(fn: Callable[[], object], seconds: float, min_iters: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up
    sync()
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while len(times) < min_iters or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def observations(b: int, device: str, gen: torch.Generator) -> tuple[Observation, Observation]:
    def obs(state_dim: int) -> Observation:
        image = torch.rand((b, 3, SIZE, SIZE), generator=gen).to(device)
        return Observation({"front": image}, torch.rand((b, state_dim), generator=gen).to(device))

    return obs(STATE), obs(STATE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few repetitions each (under a minute on 2 CPU cores)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # 1 on a shared, loaded machine: idle OpenMP workers spin
    secs, min_iters = (1.0, 5) if args.quick else (5.0, 20)
    t_start = time.perf_counter()
    cuda = torch.device(args.device).type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    spec = ObservationSpec(
        action_dim=ACTION,
        cameras=("front",),
        image_sizes=((SIZE, SIZE),),
        state_dim=STATE,
        has_goal=True,
        goal_cameras=("front",),
        goal_image_sizes=((SIZE, SIZE),),
        goal_state_dim=STATE,
    )
    cfg = ActionableModelsConfig()
    algo = ALGOS["actionable_models"](cfg, spec, args.device)
    gen = torch.Generator().manual_seed(0)
    obs1, goal1 = observations(1, args.device, gen)
    obs64, goal64 = observations(64, args.device, gen)
    actions64 = (torch.rand((64, ACTION), generator=gen) * 2 - 1).to(args.device)
    encoder, critic = algo.nets.encoder, algo.nets.critic

    @torch.no_grad()
    def q_forward() -> torch.Tensor:
        (features,) = encoder([obs64], goal64)  # (64, F)
        return critic(features, actions64)  # (N, 64)

    with torch.no_grad():
        (cached,) = encoder([obs64], goal64)  # (64, F)

    figs = {
        "cem_ms_b1": median_ms(lambda: algo.act(obs1, goal1), secs, min_iters, sync),
        "cem_ms_b64": median_ms(lambda: algo.act(obs64, goal64), secs, min_iters, sync),
        "q_forward_ms_b64": median_ms(q_forward, secs, min_iters, sync),
        "cem_head_ms_b64": median_ms(
            lambda: cem_on_critic(cached, critic, ACTION, cfg.cem, algo.rng), secs, min_iters, sync
        ),
    }
    figs["cem_vs_q_forward_b64"] = figs["cem_ms_b64"] / figs["q_forward_ms_b64"]
    figs["wall_s"] = time.perf_counter() - t_start
    c = cfg.cem
    print(
        f"cem benchmark: Actionable Models default config, {SIZE}x{SIZE} camera + goal image, A={ACTION}, "
        f"CEM N={c.samples} M={c.elites} I={c.iterations}, device {args.device}, {torch.get_num_threads()} threads"
    )
    targets = {"cem_vs_q_forward_b64": f"<< {c.samples * c.iterations} (re-encoding per sample)"}
    report(figs, targets, args.json)


if __name__ == "__main__":
    main()
