"""EDAC (An, Moon, Kim & Song, 2021): SAC-N plus a term that diversifies the critics' action gradients.

"Uncertainty-Based Offline RL with Diversified Q-Ensemble" (reference: snu-mllab/EDAC, CORL ``edac.py``).
SAC-N needs many critics because, near the data, their gradients in the action align, so the minimum
over them penalizes leaving the data only weakly; EDAC decorrelates those gradients so that a few
critics suffice. Everything is SAC-N's (``sac_n.py``) except the critic loss::

    L_Q    = Σ_i E_D[(Q_i(s, a) − y)²]  +  η·ES(s, a)
    ES     = E_D[ 1/(N − 1) · Σ_{i≠j} ⟨ĝ_i, ĝ_j⟩ ],   g_i = ∇_a Q_i(s, a) at the data action,
             ĝ_i = g_i / (‖g_i‖ + 1e-10)   (unit-normalized, as the reference)

``Σ_{i≠j} ⟨ĝ_i, ĝ_j⟩ = ‖Σ_i ĝ_i‖² − Σ_i ‖ĝ_i‖²`` (each pair counted twice, as the reference's masked
Gram matrix), computed in O(N·A) per row.

Per-critic action gradients without N critic calls: the ensemble's parameters (N, ...) are viewed as N
one-member critics and ``torch.func.vmap`` runs ``torch.func.grad`` of one member's Q over them: one
batched forward and backward gives every ``Q_i(s, a)`` (the TD term reuses them) and every
``∇_a Q_i``, and the result stays differentiable in the critic's parameters (the gradient of ES is a
second-order term, as the reference's ``create_graph=True``). A plain ``autograd.grad`` of ``Σ_i Q_i``
would return ``Σ_i g_i`` (all members share the action input); the reference instead repeats the
action N times.

Choices and deviations (beyond SAC-N's, listed in ``sac_n.py``):
- ES also reaches the encoder (the critic's input): the critic loss is what trains it here.
- Defaults as the reference: N = 10, η = 1 (the paper tunes η ∈ [0, 5] and N per D4RL task).
"""

from __future__ import annotations

import dataclasses

import torch

from robot_rl.algos.base import Encoded, Nets
from robot_rl.algos.sac import soft_td_target
from robot_rl.algos.sac_n import SACN, SACNConfig, critic_metrics, ensemble_td_loss
from robot_rl.nets import Critic


@dataclasses.dataclass(frozen=True)
class EDACConfig(SACNConfig):
    """SAC-N's fields plus η, the weight of the ensemble-similarity term."""

    eta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")


def action_gradients(
    critic: Critic, features: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every member's Q(s, a) (N, B) and ∇_a Q_i(s, a) (N, B, A), differentiable in the parameters and features."""
    members = {k: v.unsqueeze(1) for k, v in critic.named_parameters()}  # (N, 1, ...): N one-member critics

    def q_sum(params: dict[str, torch.Tensor], a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.func.functional_call(critic, params, (features, a), {"members": 1})  # (1, B)
        return q.sum(), q[0]  # rows are independent: ∇_a of the sum is each row's gradient

    grad = torch.func.vmap(torch.func.grad(q_sum, argnums=1, has_aux=True), in_dims=(0, None))
    grads, q = grad(members, actions)  # (N, B, A), (N, B)
    return q, grads


def ensemble_similarity(grads: torch.Tensor) -> torch.Tensor:
    """ES = E_B[1/(N − 1)·Σ_{i≠j} ⟨ĝ_i, ĝ_j⟩] for action gradients (N, B, A), ĝ unit-normalized."""
    n = grads.shape[0]
    unit = grads / (grads.norm(dim=-1, keepdim=True) + 1e-10)  # (N, B, A)
    pairs = unit.sum(0).pow(2).sum(-1) - unit.pow(2).sum((0, 2))  # (B,) Σ_{i≠j} ⟨ĝ_i, ĝ_j⟩
    return pairs.mean() / (n - 1)


def critic_loss(
    enc: Encoded, nets: Nets, cfg: EDACConfig, rng: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_Q = Σ_i E[(Q_i(s, a) − y)²] + η·ES, y SAC-N's soft backup (min over N target critics)."""
    alpha = nets.log_alpha().exp().detach() if cfg.backup_entropy else None
    td_target, _ = soft_td_target(enc, nets, cfg.gamma, rng, alpha)  # (B,)
    q, grads = action_gradients(nets.critic, enc.features, enc.batch.actions)  # (N, B), (N, B, A)
    td_loss = ensemble_td_loss(q, td_target)
    similarity = ensemble_similarity(grads)
    metrics = critic_metrics(q, td_target, td_loss)
    metrics["edac/similarity"] = similarity.detach()
    return td_loss + cfg.eta * similarity, metrics


class EDAC(SACN):
    """SAC-N with the diversified critic loss."""

    name = "edac"
    config_class = EDACConfig
    cfg: EDACConfig

    def critic_objective(self, enc: Encoded) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return critic_loss(enc, self.nets, self.cfg, self.rng)
