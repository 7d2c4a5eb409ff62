"""The typed input of every trajectory estimator of off-policy evaluation: :class:`Trajectories`.

N logged trajectories, padded to a common length T, each step carrying its reward, the log
probability of the logged action under the behavior policy μ (that collected the data) and under
the evaluated target policy π, and optionally a model's Q̂(s_t, a_t) and V̂(s_t) = E_{a~π} Q̂(s_t, a)
(from FQE) for the doubly robust estimators and the direct method::

    rewards        (N, T)  r_t, 0 past each trajectory's end
    mask           (N, T)  True on real steps: a prefix of each row, at least one step
    behavior_logp  (N, T)  log μ(a_t | h_t) of the logged action
    target_logp    (N, T)  log π(a_t | s_t) of the same action
    q_hat, v_hat   (N, T)  optional model values of the visited steps

Conventions (checked in ``__post_init__``, each failure a ValueError naming the field and the first
offending trajectory and step):

- On real steps every value is finite, with one exception: ``target_logp`` may be -inf (π never
  takes the logged action; that trajectory's weight is 0 from there on). ``behavior_logp = -inf``
  on a real step is an error: the logged action had probability 0 under μ, so its importance ratio
  is undefined (the behavior policy, or model, must cover every logged action).
- Values past each trajectory's end are ignored: the stored arrays hold 0 there (copies are made;
  the caller's arrays are untouched), so the log importance ratio past the end is 0 (a ratio of 1,
  the standard padding of the self-normalized estimators).
- Log probabilities are of densities for continuous actions and may be positive.
- The estimators estimate E_π[Σ_{t<T_i} γ^t r_t] over the logged horizon: a trajectory cut by a
  time limit counts as ended.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

BEHAVIOR_SOURCES = ("logged", "model")


def _first(bad: np.ndarray) -> tuple[int, int]:
    """(trajectory, step) of the first True of a (N, T) array, in trajectory-major order."""
    i, t = np.argwhere(bad)[0]
    return int(i), int(t)


@dataclasses.dataclass(frozen=True)
class Trajectories:
    """N logged trajectories padded to length T."""

    rewards: np.ndarray  # (N, T) float64, 0 past each trajectory's end
    mask: np.ndarray  # (N, T) bool, True on real steps (a prefix of each row)
    behavior_logp: np.ndarray  # (N, T) float64 log μ(a_t | h_t) of the logged action (0 past the end)
    target_logp: np.ndarray  # (N, T) float64 log π(a_t | s_t) of the same action under the evaluated policy
    gamma: float
    q_hat: np.ndarray | None = None  # (N, T) a model's Q̂(s_t, a_t) (FQE), for DR / WDR
    v_hat: np.ndarray | None = None  # (N, T) V̂(s_t) = E_{a~π} Q̂(s_t, a), for DR / WDR / the direct method
    behavior_source: str = "logged"  # "logged" (the lake's action_logp) or "model" (a fitted behavior model)

    def __post_init__(self) -> None:
        rewards = np.asarray(self.rewards, dtype=np.float64)
        if rewards.ndim != 2 or rewards.shape[0] < 1 or rewards.shape[1] < 1:
            raise ValueError(f"rewards must be (N, T) with N, T >= 1, got shape {rewards.shape}")
        mask = np.asarray(self.mask)
        if mask.shape != rewards.shape:
            raise ValueError(
                f"mask has shape {mask.shape} but rewards has {rewards.shape}: every per-step field is (N, T)"
            )
        if mask.dtype != np.bool_:
            raise ValueError(f"mask must be a bool array (True on real steps), got dtype {mask.dtype}")
        empty = ~mask[:, 0]
        if empty.any():
            i = int(np.argmax(empty))
            raise ValueError(f"mask: trajectory {i} has no real step (mask[{i}, 0] is False); drop empty trajectories")
        gap = mask[:, 1:] & ~mask[:, :-1]  # a real step right after a padded one
        if gap.any():
            i, t = _first(gap)
            raise ValueError(
                f"mask of trajectory {i} is not a prefix: step {t + 1} is real after padded step {t} "
                "(pad each trajectory at its end only)"
            )
        if not np.isfinite(self.gamma) or not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.behavior_source not in BEHAVIOR_SOURCES:
            raise ValueError(f"behavior_source must be one of {BEHAVIOR_SOURCES}, got {self.behavior_source!r}")
        fields: dict[str, Any] = {"rewards": rewards}
        for name in ("behavior_logp", "target_logp", "q_hat", "v_hat"):
            value = getattr(self, name)
            if value is None:
                continue
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != rewards.shape:
                raise ValueError(
                    f"{name} has shape {arr.shape} but rewards has {rewards.shape}: every per-step field is (N, T)"
                )
            fields[name] = arr
        behavior = fields["behavior_logp"]
        zero = mask & (behavior == -np.inf)
        if zero.any():
            i, t = _first(zero)
            raise ValueError(
                f"behavior_logp is -inf at trajectory {i}, step {t}: the logged action has probability 0 under "
                "the behavior policy, so its importance ratio is undefined (the behavior policy or model must "
                "give every logged action a positive probability)"
            )
        for name, arr in fields.items():
            allowed = np.isfinite(arr) | ((arr == -np.inf) if name == "target_logp" else False)
            bad = mask & ~allowed
            if bad.any():
                i, t = _first(bad)
                raise ValueError(
                    f"{name} is {arr[i, t]} at trajectory {i}, step {t}: values on real steps must be finite"
                )
            clean = np.where(mask, arr, 0.0)
            clean.flags.writeable = False
            object.__setattr__(self, name, clean)
        mask = mask.copy()
        mask.flags.writeable = False
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "gamma", float(self.gamma))

    @property
    def n(self) -> int:
        """Number of trajectories N."""
        return int(self.rewards.shape[0])

    @property
    def horizon(self) -> int:
        """Padded length T."""
        return int(self.rewards.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        """(N,) int: real steps of each trajectory."""
        return self.mask.sum(axis=1)

    @property
    def discounts(self) -> np.ndarray:
        """(T,) γ^t."""
        return self.gamma ** np.arange(self.horizon, dtype=np.float64)

    @property
    def returns(self) -> np.ndarray:
        """(N,) the discounted return Σ_t γ^t r_t of each trajectory."""
        return self.rewards @ self.discounts

    def select(self, index: np.ndarray | list[int] | slice) -> Trajectories:
        """The trajectories at ``index`` (rows; repeats allowed, as a bootstrap resample)."""

        def rows(x: np.ndarray | None) -> np.ndarray | None:
            return None if x is None else x[index]

        return Trajectories(
            rewards=self.rewards[index],
            mask=self.mask[index],
            behavior_logp=self.behavior_logp[index],
            target_logp=self.target_logp[index],
            gamma=self.gamma,
            q_hat=rows(self.q_hat),
            v_hat=rows(self.v_hat),
            behavior_source=self.behavior_source,
        )
