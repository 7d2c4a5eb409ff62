"""Calibrated Q-Learning (Cal-QL; Nakamoto et al., 2023): CQL with a push-down bounded below by V^μ.

Nakamoto, Zhai, Singh, Mark, Ma, Finn, Kumar & Levine, "Cal-QL: Calibrated Offline RL Pre-Training for
Efficient Online Fine-Tuning", NeurIPS 2023.

Equations (``docs/algorithms.md``, "Cal-QL"): CQL (``cql.py``) with the push-down on
policy-sampled actions bounded from below by the reference policy's value ``V^μ``::

    L_Q   = Σ_i ½·E_D[(Q_i(s, a) − y)²]
            + α′·Σ_i ( E_s[ log Σ_ã exp Q̃_i(s, ã) ] − E_D[ Q_i(s, a) ] )
    Q̃_i(s, ã) = max(Q_i(s, ã), V^μ(s))   for ã ~ π(·|s), π(·|s')       (the calibration)
    Q̃_i(s, ã) = Q_i(s, ã)                  for ã ~ Unif[-1, 1]^A
    V^μ(s) ≈ the Monte-Carlo return of the data from s (``Batch.mc_returns``)

``y``, the importance-sampled log-sum-exp, the Lagrange form, the actor and the temperature are
CQL's (and SAC's) unchanged; this file only supplies the bound. A Q-function that is
conservative but *calibrated* (never below the behaviour value) does not have to "unlearn" its
underestimation at the start of online finetuning, which removes the initial performance dip.

Choices and deviations:
- ``V^μ(s)`` is the sampler's ``mc_returns``: for task rewards the discounted return-to-go of the
  episode, for a relabeled positive goal ``γ^(j − t − 1)``, for a negative goal 0 (see
  ``data_lake/sampler.py``). The sampler's ``RelabelConfig.gamma`` must equal this config's ``gamma``
  (not checkable from a batch).
- As the reference (``enable_calql``, ``calql_bound_random_actions=False``), uniform proposals are
  not bounded, and the bound applies to the raw Q-values before the importance weights
  (``− log p(ã)``) are subtracted. Gradients do not flow through bounded entries (``max``).
- ``calibrate=False`` gives exactly CQL (a switch for ablations); ``calql/bound_rate`` is the
  fraction of policy-sampled Q-values that were below the bound (and were raised to it).
- Online finetuning (mixing offline and online samples in every batch) is the sampler's and the
  training loop's job; the update is the same.
"""

from __future__ import annotations

import dataclasses

import torch

from data_lake.batch import Batch
from robot_rl.algos.cql import CQL, CQLConfig


@dataclasses.dataclass(frozen=True)
class CalQLConfig(CQLConfig):
    """CQL's fields plus the switch for the calibration."""

    calibrate: bool = True  # bound policy-sampled Q-values by V^μ(s) = mc_returns; False: plain CQL


class CalQL(CQL):
    """CQL whose log-sum-exp sees ``max(Q(s, ã), V^μ(s))`` for policy-sampled ``ã`` (``cql.critic_loss``)."""

    name = "calql"
    config_class = CalQLConfig
    cfg: CalQLConfig

    def q_lower_bound(self, batch: Batch) -> torch.Tensor | None:
        """V^μ(s) (B,): the data's Monte-Carlo return, or None when calibration is off."""
        if not self.cfg.calibrate:
            return None
        if batch.mc_returns.shape != batch.rewards.shape:
            raise ValueError(
                f"mc_returns must be (B,) like rewards {tuple(batch.rewards.shape)}, got "
                f"{tuple(batch.mc_returns.shape)}"
            )
        return batch.mc_returns
