"""Actionable Models (Chebotar et al., 2021): goal-conditioned conservative QT-Opt with goal chaining.

Equations (``docs/algorithms.md``, "Actionable Models"), ``Q(s, a, g) = sigmoid(f(s, a, g)) ∈ [0, 1]``::

    y      = r + γ(1 − d)·V̄(s', g),   V̄(s', g) = min_i Q̄_i(s', π̄(s', g), g),  π̄ = CEM on Q̄_1   (positives)
    y      = γ·V̄(s', g)            goal chaining: g from another episode, r = d = 0, bootstrapped
    y      = 0                     another episode's goal outside the chaining fraction (a negative goal)
    L_pos  = Σ_i E_D[ H(y, Q_i(s, a, g)) ]
    L_neg  = Σ_i E_{(s, g)~D, ã~q(·|s, g)}[ H(0, Q_i(s, ã, g)) ]       artificial negative actions, pushed to 0
    L_g    = L_pos + α_neg·L_neg                                      the regularized goal-reaching loss

Rows come from the goal-relabeling sampler: ``future`` / ``final`` rows are hindsight positives (r = d = 1
at the reaching step, so y = 1 there), ``negative`` rows carry a goal from a *different* episode and are
the chaining candidates (a ``chaining_fraction`` of them bootstrap, the rest are negative goals with
y = 0), ``commanded`` / ``task`` rows learn the task reward. The chaining share of a batch is the
sampler's ``relabel.negative`` times ``chaining_fraction``.

Negative actions ``q(·|s, g)``: ``uniform`` on the action box (discrete gripper: ±1), or ``exp_q``:
``negative_candidates`` uniform actions resampled ∝ exp(f̄(s, ã, g)/T) (f̄ the critics' mean raw output,
so hard negatives, the ones Q ranks high, are pushed down most). No negative lies within
``negative_min_distance`` (L∞) of the data action: a draw that does has its farthest coordinate redrawn
uniformly from the part of [-1, 1] at least that far from the data action's coordinate.

``goal_reaching_loss(enc, nets, cfg, rng)`` is L_g as a pure function of an encoded batch and a ModuleDict
with ``critic`` and ``target_critic`` (and nothing else): the finetuning loop adds ξ·L_g to a task loss
with these heads on the task learner's encoder (``finetune.py``).

Choices and deviations:
- Everything QT-Opt (CEM, clipped double-Q targets, no target encoder, encode once) is ``qtopt.py``.
- Negatives are scored in the same batched critic call as the data action, on the cached embedding.
- The CQL-style alternative (log-sum-exp push-down against a data push-up) is not implemented; the
  negatives get the paper's cross-entropy to label 0 (squared error to 0 with ``q_output="linear"``).
- The paper's goal chaining relabels with goals from other trajectories of the *dataset*; here they
  come from the sampler's ``negative`` source (another episode of the pinned snapshot).
"""

from __future__ import annotations

import dataclasses

import torch

from data_lake.batch import NEGATIVE
from robot_rl.algos.base import Encoded, Nets
from robot_rl.algos.qtopt import CEMConfig, QTOpt, QTOptConfig, q_from_output, q_loss, td_target
from robot_rl.nets import Critic

NEGATIVE_SAMPLING = ("uniform", "exp_q")


@dataclasses.dataclass(frozen=True)
class ActionableModelsConfig(QTOptConfig):
    """QTOptConfig's fields (CEM, critics, q_output) plus the conservative and chaining parts:"""

    num_negatives: int = 4  # K artificial negative actions per (s, g)
    negative_sampling: str = "uniform"  # "uniform" | "exp_q"
    negative_candidates: int = 16  # exp_q: uniform candidates resampled ∝ exp(f/T)
    negative_temperature: float = 1.0  # T of exp_q
    negative_weight: float = 1.0  # α_neg
    negative_min_distance: float = 0.1  # L∞ distance every negative keeps from the data action
    chaining_fraction: float = 1.0  # share of other-episode goals with bootstrapped (not 0) targets
    # π̄ of the TD target: 32 samples, 1 iteration (half the acting CEM's scoring, a quarter of its passes);
    # same success on reach from states and images, 1.3x faster updates (docs/learning.md)
    target_cem: CEMConfig | None = dataclasses.field(
        default_factory=lambda: CEMConfig(samples=32, elites=4, iterations=1)
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_negatives < 1 or self.negative_candidates < 1:
            raise ValueError(
                f"num_negatives and negative_candidates must be >= 1, got {self.num_negatives}, "
                f"{self.negative_candidates}"
            )
        if self.negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got {self.negative_sampling!r}")
        if self.negative_temperature <= 0 or self.negative_weight < 0:
            raise ValueError(
                f"negative_temperature must be > 0 and negative_weight >= 0, got "
                f"{self.negative_temperature}, {self.negative_weight}"
            )
        if not 0 <= self.negative_min_distance < 1:
            raise ValueError(f"negative_min_distance must be in [0, 1), got {self.negative_min_distance}")
        if not 0 <= self.chaining_fraction <= 1:
            raise ValueError(f"chaining_fraction must be in [0, 1], got {self.chaining_fraction}")


def uniform_negatives(
    data_actions: torch.Tensor, n: int, cem: CEMConfig, min_distance: float, rng: torch.Generator
) -> torch.Tensor:
    """n actions per row, uniform on the box, none within ``min_distance`` (L∞) of the data action -> (B, n, A)."""
    B, A = data_actions.shape
    actions = torch.rand((B, n, A), generator=rng, device=data_actions.device) * 2 - 1  # (B, n, A)
    cont = A - 1 if cem.discrete_gripper else A  # continuous dimensions
    if cem.discrete_gripper:
        actions[..., -1] = torch.where(actions[..., -1] > 0, 1.0, -1.0)
    data = data_actions.clamp(-1.0, 1.0).unsqueeze(1).expand(B, n, A)  # (B, n, A)
    deviation = (actions - data).abs()  # (B, n, A)
    close = deviation.amax(-1) < min_distance  # (B, n)
    if cont == 0:  # only a gripper: the negative is the other choice
        actions[..., -1] = torch.where(close, -data[..., -1].sign(), actions[..., -1])
        return actions
    # redraw the farthest continuous coordinate j from {x ∈ [-1, 1]: |x − a_j| >= min_distance}
    j = deviation[..., :cont].argmax(-1, keepdim=True)  # (B, n, 1)
    a_j = data.gather(-1, j).squeeze(-1)  # (B, n)
    below = (a_j + 1 - min_distance).clamp_min(0)  # length of [-1, a_j − δ]
    above = (1 - a_j - min_distance).clamp_min(0)  # length of [a_j + δ, 1]
    u = torch.rand((B, n), generator=rng, device=data_actions.device) * (below + above)  # (B, n)
    redrawn = torch.where(u < below, u - 1, a_j + min_distance + (u - below))  # (B, n)
    current = actions.gather(-1, j).squeeze(-1)
    return actions.scatter(-1, j, torch.where(close, redrawn, current).unsqueeze(-1))


@torch.no_grad()
def negative_actions(enc: Encoded, critic: Critic, cfg: ActionableModelsConfig, rng: torch.Generator) -> torch.Tensor:
    """K artificial negative actions per row, never within ``negative_min_distance`` of a -> (B, K, A)."""
    a = enc.batch.actions  # (B, A)
    K = cfg.num_negatives
    if cfg.negative_sampling == "uniform":
        return uniform_negatives(a, K, cfg.cem, cfg.negative_min_distance, rng)
    cand = uniform_negatives(a, cfg.negative_candidates, cfg.cem, cfg.negative_min_distance, rng)  # (B, C, A)
    f = critic.q_values(enc.features.detach(), cand).mean(0)  # (B, C)
    idx = torch.multinomial(torch.softmax(f / cfg.negative_temperature, dim=-1), K, True, generator=rng)  # (B, K)
    return cand.gather(1, idx.unsqueeze(-1).expand(-1, -1, a.shape[1]))  # (B, K, A)


def goal_reaching_loss(
    enc: Encoded, nets: Nets, cfg: ActionableModelsConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_g = L_pos + α_neg·L_neg on an encoded batch; ``nets`` holds ``critic`` and ``target_critic``."""
    b = enc.batch
    B = len(b)
    with torch.no_grad():
        other = b.goal_source == NEGATIVE  # (B,) goals from another episode
        chain = other & (torch.rand(B, generator=rng, device=other.device) < cfg.chaining_fraction)  # (B,)
        y = td_target(enc, nets, cfg, rng)  # (B,) r + γ(1 − d)·V̄(s', g); r = d = 0 on other-episode rows
        y = torch.where(other & ~chain, torch.zeros_like(y), y)  # negative goals: 0
        negatives = negative_actions(enc, nets.critic, cfg, rng)  # (B, K, A)
    actions = torch.cat([b.actions.unsqueeze(1), negatives], dim=1)  # (B, 1 + K, A)
    out = nets.critic.q_values(enc.features, actions)  # (N, B, 1 + K), one call on the cached embedding
    pos_loss = q_loss(out[..., 0], y, cfg).mean(1).sum()
    neg_loss = q_loss(out[..., 1:], out.new_zeros(()), cfg).mean((1, 2)).sum()
    q = q_from_output(out.detach(), cfg)  # (N, B, 1 + K)
    reached = b.terminals  # (B,) 1 at the reaching step
    metrics = {
        "critic/td_loss": pos_loss.detach(),
        "critic/q_data": q[..., 0].mean(),
        "critic/td_target": y.mean(),
        "am/negative_loss": neg_loss.detach(),
        "am/q_negative": q[..., 1:].mean(),
        "am/q_gap": q[..., 0].mean() - q[..., 1:].mean(),
        "am/chain_rate": chain.float().mean(),
        "am/q_reached": (q[..., 0] * reached).sum() / (q.shape[0] * reached.sum()).clamp_min(1),
    }
    return pos_loss + cfg.negative_weight * neg_loss, metrics


class ActionableModels(QTOpt):
    """QT-Opt's networks, update and CEM policy; the loss is the regularized goal-reaching loss L_g."""

    name = "actionable_models"
    config_class = ActionableModelsConfig
    cfg: ActionableModelsConfig

    def loss(self, enc: Encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return goal_reaching_loss(enc, self.nets, self.cfg, self.rng)
