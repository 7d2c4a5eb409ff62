"""Where one Actionable Models image update spends its time, phase by phase, on this machine.

    .venv/bin/python -m benchmarks.profile_update [--quick] [--json PATH] [--plot PATH] [--size 64] [--batch 256]

The update of ``ActionableModels.update``, taken apart and timed phase by phase on the same batches
(synthetic 64x64 episodes by default, B = 256, goal relabeling with negatives):

    encode      the encoder forward on s, s' and g (each image once)
    target_cem  y = r + γ min_i Q̄_i(s', CEM(Q̄_1)) (no grad; ``target_cem``)
    negatives   the artificial negative actions (uniform; no grad)
    critic      Q_i(s, [a, negatives]) and the loss
    backward    loss.backward() through critic and encoder
    optimizer   Adam step + Polyak update of the target critic

The baseline measured in the same run is the whole ``update()`` call: ``<phase>_share`` is the
phase's seconds over the sum of phases, ``phases_vs_update`` the sum over the whole update (≈ 1:
nothing is missing). ``--baseline`` JSON (the learner benchmark's issue-13 starting point by
default) profiles that configuration too (figures ``baseline_<phase>_s``).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import torch

from benchmarks.learner import BASELINE_AM
from benchmarks.report import report
from data_lake import Lake
from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig
from data_lake.synthetic import synthetic_episode
from robot_rl.algos import ALGOS, encode
from robot_rl.algos.actionable_models import negative_actions
from robot_rl.algos.base import polyak_update
from robot_rl.algos.qtopt import q_loss, td_target
from robot_rl.config import from_dict
from robot_rl.nets import ObservationSpec

PHASES = ("encode", "target_cem", "negatives", "critic", "backward", "optimizer")


def profile(algo, batches: list, iters: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Mean seconds per phase, and of the whole ``update()``, over ``iters`` updates each."""
    nets, cfg, rng = algo.nets, algo.cfg, algo.rng
    opt = algo.optimizers["critic"]
    sums = dict.fromkeys((*PHASES, "update"), 0.0)
    for i in range(iters):
        batch = batches[i % len(batches)]
        t = [time.perf_counter()]
        enc = encode(nets.encoder, batch)
        t.append(time.perf_counter())
        with torch.no_grad():
            y = td_target(enc, nets, cfg, rng)  # (B,)
        t.append(time.perf_counter())
        with torch.no_grad():
            negatives = negative_actions(enc, nets.critic, cfg, rng)  # (B, K, A)
        t.append(time.perf_counter())
        actions = torch.cat([batch.actions.unsqueeze(1), negatives], dim=1)  # (B, 1 + K, A)
        out = nets.critic.q_values(enc.features, actions)  # (N, B, 1 + K)
        loss = (
            q_loss(out[..., 0], y, cfg).mean(1).sum() + q_loss(out[..., 1:], out.new_zeros(()), cfg).mean((1, 2)).sum()
        )
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        polyak_update(nets.target_critic, nets.critic, cfg.tau)
        t.append(time.perf_counter())
        for k, name in enumerate(PHASES):
            sums[name] += t[k + 1] - t[k]
        t0 = time.perf_counter()
        algo.update(batch)
        sums["update"] += time.perf_counter() - t0
    return {k: v / iters for k, v in sums.items()}


def plot(rows: dict[str, dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robot_rl.diagnostics import save_figure

    fig, ax = plt.subplots(figsize=(6.4, 1.2 + 0.6 * len(rows)))
    for y, secs in enumerate(rows.values()):
        left = 0.0
        for k, phase in enumerate(PHASES):
            ax.barh(y, secs[phase], left=left, color=f"C{k}", label=phase if y == 0 else None)
            left += secs[phase]
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set(xlabel="seconds per update", title="one Actionable Models image update, by phase")
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    save_figure(fig, ax, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--plot", help="write a stacked bar chart of the phases here (PNG)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--baseline", default=json.dumps(BASELINE_AM), help="config overrides to profile too ('' for none)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    lake = Lake.create(f"memory://profile-{uuid.uuid4().hex}")
    lake.append([synthetic_episode(i, length=30, size=a.size) for i in range(8)])
    relabel = RelabelConfig(future=0.5, final=0.2, negative=0.3, task=0.0)
    with Sampler(
        lake.checkout(), SamplerConfig(batch_size=a.batch, relabel=relabel, augment_pad=4), progress=False
    ) as s:
        batches = [next(s) for _ in range(3)]
    spec = ObservationSpec.from_batch(batches[0])
    cls = ALGOS["actionable_models"]
    configs = {"default": {}} | ({"baseline": json.loads(a.baseline)} if a.baseline else {})
    iters = 3 if a.quick else 10
    rows: dict[str, dict[str, float]] = {}
    figs: dict[str, float] = {}
    for name, overrides in configs.items():
        algo = cls(from_dict(cls.config_class, overrides), spec)
        algo.update(batches[0])  # warm-up
        secs = profile(algo, batches, iters)
        rows[name] = secs
        prefix = "" if name == "default" else "baseline_"
        total = sum(secs[p] for p in PHASES)
        figs |= {f"{prefix}{p}_s": secs[p] for p in PHASES}
        figs |= {f"{prefix}{p}_share": secs[p] / total for p in PHASES}
        figs[f"{prefix}update_s"] = secs["update"]
        figs[f"{prefix}phases_vs_update"] = total / secs["update"]
    figs |= {"batch_size": float(a.batch), "image_size": float(a.size), "threads": float(torch.get_num_threads())}
    figs["wall_s"] = time.perf_counter() - t_start
    if a.plot:
        plot(rows, a.plot)
    report(figs, {"phases_vs_update": "~ 1"}, a.json)


if __name__ == "__main__":
    main()
