"""MT-Opt (Kalashnikov et al., 2021): one multi-task QT-Opt Q-function shared by every task.

Equations (``docs/algorithms.md``, "MT-Opt"), ``e_k`` the learned task embedding::

    Q(s, a, k) = sigmoid(f(φ(s), e_k, a)) ∈ [0, 1]
    y          = r_k + γ(1 − d_k)·min_i Q̄_i(s', π̄(s', k), k),   π̄(s', k) = CEM on Q̄_1(s', ·, k)
    L_Q        = Σ_i Σ_b w_b·H(y_b, Q_i(s_b, a_b, k_b)),   w_b = 1/B, or (``task_balanced_loss``) 1/(K·n_{k_b})
    L_neg      = Σ_i Σ_b w_b·(1/J)·Σ_j H(0, Q_i(s_b, ã_bj, k_b)),   ã_bj ~ U([-1, 1]^A), ‖ã_bj − a_b‖_∞ >= δ
    L          = L_Q + α_neg·L_neg                                   (L_neg only with ``negative_actions = J > 0``)
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
- ``negative_actions`` (not in the paper, off by default): Actionable Models' conservative term
  (``actionable_models.py``, L_neg with uniform negatives): J artificial actions per row, uniform on
  the box and at least ``negative_min_distance`` (L∞) from the data action, get the target 0 (the
  same w_b as their row). Offline, plain QT-Opt has nothing that keeps CEM from maximizing Q on
  actions the data never took, and Q learned from data alone is highest there; L_neg ranks the
  data's actions above the rest of the box.
- Without task conditioning (``num_tasks = 0``) this is single-task QT-Opt.
"""

from __future__ import annotations

import dataclasses

import torch

from robot_rl.algos.actionable_models import uniform_negatives
from robot_rl.algos.base import Encoded, Nets
from robot_rl.algos.qtopt import QTOpt, QTOptConfig, q_from_output, q_loss, td_target


@dataclasses.dataclass(frozen=True)
class MTOptConfig(QTOptConfig):
    """QTOptConfig's fields (CEM, critics, q_output) plus:"""

    task_balanced_loss: bool = False  # weigh every task in the batch equally in the loss
    negative_actions: int = 0  # J artificial negative actions per row pushed to Q = 0 (L_neg); 0: off
    negative_weight: float = 1.0  # α_neg
    negative_min_distance: float = 0.1  # δ: L∞ distance every negative keeps from the data action

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.negative_actions < 0 or self.negative_weight < 0:
            raise ValueError(
                f"negative_actions and negative_weight must be >= 0, got {self.negative_actions}, "
                f"{self.negative_weight}"
            )
        if not 0 <= self.negative_min_distance < 1:
            raise ValueError(f"negative_min_distance must be in [0, 1), got {self.negative_min_distance}")


def task_weights(task_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w_b = 1/(K·n_{k_b}) (sums to 1, each task's rows to 1/K) and K, without a device sync -> (B,), ()."""
    same = task_ids.unsqueeze(0) == task_ids.unsqueeze(1)  # (B, B)
    n_k = same.sum(1).float()  # (B,) rows sharing each row's task
    num_tasks = (1.0 / n_k).sum()  # K
    return 1.0 / (num_tasks * n_k), num_tasks


def multi_task_loss(
    enc: Encoded, nets: Nets, cfg: MTOptConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q (+ α_neg·L_neg) on task-conditioned rows: cross-entropy (or ½ squared error) to the CEM clipped
    double-Q target, and with ``negative_actions`` the conservative push of uniform negatives to 0."""
    b = enc.batch
    y = td_target(enc, nets, cfg, rng)  # (B,), CEM per row on that row's task
    w, num_tasks = task_weights(b.task_ids)  # (B,)
    if not cfg.task_balanced_loss:
        w = torch.full_like(w, 1.0 / len(b))
    J = cfg.negative_actions
    if J > 0:
        negatives = uniform_negatives(b.actions, J, cfg.cem, cfg.negative_min_distance, rng)  # (B, J, A)
        actions = torch.cat([b.actions.unsqueeze(1), negatives], dim=1)  # (B, 1 + J, A)
        out = nets.critic.q_values(enc.features, actions)  # (N, B, 1 + J), one call on the cached embedding
    else:
        out = nets.critic(enc.features, b.actions).unsqueeze(-1)  # (N, B, 1)
    loss = (q_loss(out[..., 0], y, cfg) * w).sum()
    q = q_from_output(out.detach(), cfg)  # (N, B, 1 + J)
    metrics = {
        "critic/td_loss": loss.detach(),
        "critic/q_data": q[..., 0].mean(),
        "critic/td_target": y.mean(),
        "critic/target_above_1": (y > 1.0).float().mean(),
        "mt_opt/tasks_in_batch": num_tasks,
        "mt_opt/reward_rate": b.rewards.mean(),
    }
    if J == 0:
        return loss, metrics
    neg_loss = (q_loss(out[..., 1:], out.new_zeros(()), cfg).mean(2) * w).sum()  # H(0, Q_i(s, ã, k))
    metrics |= {
        "mt_opt/negative_loss": neg_loss.detach(),
        "mt_opt/q_negative": q[..., 1:].mean(),
        "mt_opt/q_gap": q[..., 0].mean() - q[..., 1:].mean(),
    }
    return loss + cfg.negative_weight * neg_loss, metrics


class MTOpt(QTOpt):
    """QT-Opt's networks, update and CEM policy with a task-conditioned encoder; per-task CEM via task_ids."""

    name = "mt_opt"
    config_class = MTOptConfig
    cfg: MTOptConfig

    def loss(self, enc: Encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return multi_task_loss(enc, self.nets, self.cfg, self.rng)
