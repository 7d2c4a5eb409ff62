"""MT-Opt (Kalashnikov et al., 2021): one multi-task QT-Opt Q-function shared by every task.

Equations (``docs/algorithms.md``, "MT-Opt"), ``e_k`` the learned task embedding::

    Q(s, a, k) = sigmoid(f(φ(s), e_k, a)) ∈ [0, 1]
    y          = r_k + γ(1 − d_k)·min_i Q̄_i(s', π̄(s', k), k),   π̄(s', k) = CEM on Q̄_1(s', ·, k)
    L_Q        = Σ_i Σ_b w_b·H(y_b, Q_i(s_b, a_b, k_b)),   w_b = 1/B, or (``task_balanced_loss``) 1/(K·n_{k_b})
    π(s, k)    = CEM on Q_1(s, ·, k)                                                    (one policy per task)

with ``K`` the number of tasks in the batch and ``n_k`` the rows of task ``k``. The task embedding is
the encoder's task conditioning (``ObservationSpec.num_tasks > 0``; ``Batch.task_ids``), concatenated
to the image/state embedding once per row and shared by ``s`` and ``s'``.

Data sharing and balancing live in the sampler (``data_lake/sampler.py``), driven by config:
- data sharing: ``relabel.p_task > 0`` gives a row another task ``k`` and ``r = d = label_k(s_{t+1})``,
  the stored success label of task ``k`` (``robot-rl lake label --task NAME``);
- balancing: ``task_balanced=True`` draws equal shares per task, and within a task equal shares of
  successful and failed episodes (the paper's "on-demand" sampling);
- success ends an episode: ``relabel.success_terminal=True`` for the task's own rewards.

Choices and deviations:
- Everything QT-Opt (CEM, clipped double-Q targets, no target encoder, encode once) is ``qtopt.py``.
- ``task_balanced_loss`` re-weights rows so each task in the batch weighs the same in the loss, the
  loss-side counterpart of the sampler's balancing (useful when task relabeling skews a batch); off
  by default, as in the paper, which balances at the data level only.
- Without task conditioning (``num_tasks = 0``) this is single-task QT-Opt.
"""

from __future__ import annotations

import dataclasses

import torch

from robot_rl.algos.base import Encoded, Nets
from robot_rl.algos.qtopt import QTOpt, QTOptConfig, q_from_output, q_loss, td_target


@dataclasses.dataclass(frozen=True)
class MTOptConfig(QTOptConfig):
    """QTOptConfig's fields (CEM, critics, q_output) plus:"""

    task_balanced_loss: bool = False  # weigh every task in the batch equally in the loss


def task_weights(task_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w_b = 1/(K·n_{k_b}) (sums to 1, each task's rows to 1/K) and K, without a device sync -> (B,), ()."""
    same = task_ids.unsqueeze(0) == task_ids.unsqueeze(1)  # (B, B)
    n_k = same.sum(1).float()  # (B,) rows sharing each row's task
    num_tasks = (1.0 / n_k).sum()  # K
    return 1.0 / (num_tasks * n_k), num_tasks


def multi_task_loss(
    enc: Encoded, nets: Nets, cfg: MTOptConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q on task-conditioned rows: cross-entropy (or ½ squared error) to the CEM clipped double-Q target."""
    b = enc.batch
    y = td_target(enc, nets, cfg, rng)  # (B,), CEM per row on that row's task
    out = nets.critic(enc.features, b.actions)  # (N, B)
    w, num_tasks = task_weights(b.task_ids)  # (B,)
    if not cfg.task_balanced_loss:
        w = torch.full_like(w, 1.0 / len(b))
    loss = (q_loss(out, y, cfg) * w).sum()
    return loss, {
        "critic/td_loss": loss.detach(),
        "critic/q_data": q_from_output(out, cfg).mean().detach(),
        "critic/td_target": y.mean(),
        "critic/target_above_1": (y > 1.0).float().mean(),
        "mt_opt/tasks_in_batch": num_tasks,
        "mt_opt/reward_rate": b.rewards.mean(),
    }


class MTOpt(QTOpt):
    """QT-Opt's networks, update and CEM policy with a task-conditioned encoder; per-task CEM via task_ids."""

    name = "mt_opt"
    config_class = MTOptConfig
    cfg: MTOptConfig

    def loss(self, enc: Encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return multi_task_loss(enc, self.nets, self.cfg, self.rng)
