"""Planning latency: Trajectory Transformer beam search against QT-Opt's CEM, per action.

    .venv/bin/python -m benchmarks.planning [--quick] [--json PATH] [--device cpu|cuda] [--threads N]

Data: a state-based point mass (4-d state: position and velocity, 2-d actions, r = −|position|),
windows of synthetic episodes built here; the TT's bins are fitted on them and the model trained for a
few updates (latency does not depend on the weights, but the bins do shape what the beam samples).
Model: a small TT (V = 32 bins, T = 4 + 2 + 2 = 8 tokens per step, context K = 5 steps, 2 layers of
width 64, horizon H = 5, expansion E = 4, top-k 8); no KV cache, so a planned step costs T transformer
calls on up to B·E rows of up to K·T tokens (the beam grows from one row: 4, 16, 64 rows kept).

- ``tt_ms_per_action_beam{4,16,64}``: ``policy(observation)`` for one env with a full context of K − 1
  past steps, beam width B = 4, 16, 64 (H·T = 40 transformer calls each).
- ``cem_ms_per_action``: QT-Opt's default CEM (N = 64, M = 6, I = 2 over a (256, 256) critic) acting
  on one state (``algo.act``).
- ``tt_vs_cem_beam{4,16,64}``: the ratios.
Each figure is the median over timed repetitions (CUDA: synchronized).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from benchmarks.cem import median_ms
from benchmarks.report import report
from data_lake.batch import Observation
from data_lake.sequences import SequenceBatch
from robot_rl.algos import ALGOS, TT, QTOptConfig, TTConfig
from robot_rl.nets import ObservationSpec

STATE, ACTION, K = 4, 2, 5
WIDTHS = (4, 16, 64)


def point_mass_windows(B: int, gen: torch.Generator, dt: float = 0.1) -> SequenceBatch:
    """B windows of K steps of a damped point mass driven by random actions."""
    pos, vel = torch.randn(B, 2, generator=gen), torch.zeros(B, 2)
    states, actions, rewards = [], [], []
    for _ in range(K):
        a = torch.rand(B, ACTION, generator=gen) * 2 - 1
        states.append(torch.cat([pos, vel], 1))
        actions.append(a)
        rewards.append(-pos.norm(dim=1))
        vel = 0.9 * vel + dt * a
        pos = pos + dt * vel
    r = torch.stack(rewards, 1)  # (B, K)
    return SequenceBatch(
        observations=Observation({}, torch.stack(states, 1).flatten(0, 1)),
        actions=torch.stack(actions, 1),
        rewards=r,
        returns_to_go=r.flip(1).cumsum(1).flip(1),
        timesteps=torch.arange(K).expand(B, K),
        mask=torch.ones(B, K),
        goals=None,
        task_ids=torch.zeros(B, dtype=torch.long),
        return_scale=torch.ones(B),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few repetitions each (under a minute on 2 CPU cores)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    secs, min_iters = (1.0, 3) if args.quick else (5.0, 10)
    t_start = time.perf_counter()
    cuda = torch.device(args.device).type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    spec = ObservationSpec(action_dim=ACTION, state_dim=STATE)
    gen = torch.Generator().manual_seed(0)
    data = point_mass_windows(256, gen).to(args.device)
    obs = Observation({}, torch.randn(1, STATE, generator=gen).to(args.device))
    figs: dict[str, float] = {}
    base = TTConfig(
        sequence_length=K, bins=32, embed_dim=64, layers=2, heads=2, horizon=5, expansion=4, top_k=8, seed=0
    )
    tt = TT(base, spec, args.device)
    for _ in range(3 if args.quick else 20):
        tt.update(data)
    for width in WIDTHS:
        tt.cfg = dataclasses.replace(base, beam_width=width)
        policy = tt.policy
        policy.reset_context(1)
        for _ in range(K - 1):  # a full context of past steps
            policy(obs)
        history = policy.context
        assert history is not None

        def act(p=policy, h=history) -> torch.Tensor:
            p.context = h  # the same context every repetition
            return p(obs)

        figs[f"tt_ms_per_action_beam{width}"] = median_ms(act, secs, min_iters, sync)
    qtopt = ALGOS["qtopt"](QTOptConfig(seed=0), spec, args.device)
    figs["cem_ms_per_action"] = median_ms(lambda: qtopt.act(obs), secs, min_iters, sync)
    for width in WIDTHS:
        figs[f"tt_vs_cem_beam{width}"] = figs[f"tt_ms_per_action_beam{width}"] / figs["cem_ms_per_action"]
    figs["wall_s"] = time.perf_counter() - t_start
    c = QTOptConfig().cem
    print(
        f"planning benchmark: point mass S={STATE} A={ACTION}; TT V={base.bins} K={K} H={base.horizon} "
        f"E={base.expansion} width {base.embed_dim}x{base.layers}; CEM N={c.samples} M={c.elites} "
        f"I={c.iterations}; device {args.device}, {torch.get_num_threads()} threads"
    )
    report(figs, {}, args.json)


if __name__ == "__main__":
    main()
