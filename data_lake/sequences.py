"""Windows of K consecutive steps for sequence models (the Decision Transformer): ``SequenceBatch``.

Every other algorithm learns from the one transition ``Batch``; a sequence model needs histories.
``SequenceSampler`` is the goal-relabeling ``Sampler`` (same pinned snapshot, in-memory
``EpisodePool``, prefetch thread, device augmentation and exact resume) drawing windows instead:

    window end  t ~ uniform over the transition steps (``is_last[t]`` False; task-balanced when asked)
    steps       t - K + 1, ..., t; steps before the episode's first step are *left padding*:
                mask 0, zero action / reward / return-to-go / timestep, observation = the first step's
                (never attended to: the model masks padding keys)
    timestep    the step's index in its episode (0 at the first step)
    R̂_k        Σ_{i ≥ k} r_i to the episode's end (undiscounted; the last step's reward unused, as for
                transitions), divided by the task's return scale: the largest episode return of that
                task in memory (1 when it is not positive), so R̂ = 1 is the best episode of the data
    goal        one per window (goal-conditioned sampling: ``relabel.uses_goals``): the episode's stored
                commanded goal when ``relabel.commanded > 0`` and it has one, else hindsight's final
                goal, the episode's last observation (goal images from the goal cameras, goal state =
                ``achieved_goal``, else ``state``, as the transition sampler builds them)

Observations are flat, (B·K, ...) with row ``b·K + k`` = step k of window b, so an encoder embeds
the B·K frames in one pass and ``Observation.to`` / DrQ's random shift work unchanged (each frame
gets its own shift).

A transition ``Batch`` can be read as windows of two steps (``SequenceBatch.from_transitions``):
(s_t, s_{t+1}) with actions (a_t, a'_{t+1}), R̂ = (mc_return, mc_return − r), timesteps (0, 1), the
second step masked when the transition is terminal, return scale 1. That is what a replay of
transitions (the contract suite's batches, finetuning) can give a sequence model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from data_lake.batch import Batch, Observation
from data_lake.lake import LakeView
from data_lake.sampler import (
    EpisodePool,
    Sampler,
    SamplerConfig,
    SamplerError,
    _draw_steps,
    _return_to_go,
)


@dataclasses.dataclass(frozen=True)
class SequenceBatch:
    """B windows of K steps (left-padded inside one episode) and their conditioning."""

    observations: Observation  # (B·K, ...): row b·K + k is step k of window b
    actions: torch.Tensor  # (B, K, A) float32, 0 at padding
    rewards: torch.Tensor  # (B, K) float32
    returns_to_go: torch.Tensor  # (B, K) float32 R̂, normalized by the task's return scale
    timesteps: torch.Tensor  # (B, K) int64 step index in the episode
    mask: torch.Tensor  # (B, K) float32: 1 a real step, 0 padding
    goals: Observation | None  # (B, ...) one goal per window; None without goal conditioning
    task_ids: torch.Tensor  # (B,) int64
    return_scale: torch.Tensor  # (B,) float32 the task's scale R̂ was divided by

    @property
    def context(self) -> int:
        return int(self.actions.shape[1])

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = True, float_images: bool = True) -> SequenceBatch:
        def mv(x: torch.Tensor) -> torch.Tensor:
            return x.to(device, non_blocking=non_blocking)

        return SequenceBatch(
            observations=self.observations.to(device, non_blocking, float_images),
            actions=mv(self.actions),
            rewards=mv(self.rewards),
            returns_to_go=mv(self.returns_to_go),
            timesteps=mv(self.timesteps),
            mask=mv(self.mask),
            goals=None if self.goals is None else self.goals.to(device, non_blocking, float_images),
            task_ids=mv(self.task_ids),
            return_scale=mv(self.return_scale),
        )

    def pin_memory(self) -> SequenceBatch:
        return SequenceBatch(
            observations=self.observations.pin_memory(),
            actions=self.actions.pin_memory(),
            rewards=self.rewards.pin_memory(),
            returns_to_go=self.returns_to_go.pin_memory(),
            timesteps=self.timesteps.pin_memory(),
            mask=self.mask.pin_memory(),
            goals=None if self.goals is None else self.goals.pin_memory(),
            task_ids=self.task_ids.pin_memory(),
            return_scale=self.return_scale.pin_memory(),
        )

    @classmethod
    def from_transitions(cls, batch: Batch) -> SequenceBatch:
        """A transition Batch as B windows of two steps (s_t, s_{t+1}); see the module docstring."""

        def pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (B, ...) × 2 -> (B·2, ...)
            return torch.stack([a, b], 1).flatten(0, 1)

        o, no = batch.observations, batch.next_observations
        obs = Observation(
            {c: pair(x, no.images[c]) for c, x in o.images.items()},
            None if o.state is None or no.state is None else pair(o.state, no.state),
        )
        B = len(batch)
        next_actions = batch.actions if batch.next_actions is None else batch.next_actions
        ones = torch.ones_like(batch.rewards)
        return cls(
            observations=obs,
            actions=torch.stack([batch.actions, next_actions], 1),  # (B, 2, A)
            rewards=torch.stack([batch.rewards, torch.zeros_like(batch.rewards)], 1),
            returns_to_go=torch.stack([batch.mc_returns, batch.mc_returns - batch.rewards], 1),
            timesteps=torch.arange(2, device=batch.actions.device).expand(B, 2),
            mask=torch.stack([ones, 1.0 - batch.terminals], 1),
            goals=batch.goals,
            task_ids=batch.task_ids,
            return_scale=ones,
        )


# ---------------------------------------------------------------------------- windows from the pool
@dataclasses.dataclass(frozen=True)
class Windows:
    """The index plan of one sequence batch (numpy)."""

    steps: np.ndarray  # (B, K) step indices, padding clamped to the episode's first step
    valid: np.ndarray  # (B, K) bool
    episode: np.ndarray  # (B,)


def return_statistics(pool: EpisodePool, discount: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Return-to-go R̂_t = Σ_{t' ≥ t} discount^{t'−t} r_t' (N,) of every step (undiscounted by default), and each
    task's return scale (num task ids,): the best episode's R̂_0."""
    rtg = _return_to_go(pool.reward, pool.ep_start, pool.ep_end, discount)  # (N,)
    n_tasks = int(pool.task_of.max()) + 1 if len(pool.task_of) else 1
    scale = np.ones(n_tasks, np.float32)
    ep_return = rtg[pool.ep_start]  # (E,)
    for k in range(n_tasks):
        best = ep_return[pool.task_of == k]
        if len(best) and best.max() > 0:
            scale[k] = best.max()
    return rtg, scale


def sample_windows(
    pool: EpisodePool, cfg: SamplerConfig, length: int, rng: np.random.Generator, batch_size: int
) -> Windows:
    """B windows of ``length`` steps ending at uniformly drawn transition steps."""
    t = _draw_steps(pool, pool.valid, batch_size, rng, cfg)  # (B,) window ends
    ep = pool.ep_of[t]
    steps = t[:, None] - np.arange(length - 1, -1, -1)[None]  # (B, K)
    start = pool.ep_start[ep][:, None]
    return Windows(np.maximum(steps, start), steps >= start, ep)


def gather_windows(
    pool: EpisodePool, w: Windows, rtg: np.ndarray, scale: np.ndarray, goals: bool, commanded: bool
) -> SequenceBatch:
    """A host SequenceBatch (uint8 images) from a window plan."""
    B = w.steps.shape[0]
    flat = w.steps.reshape(-1)  # (B·K,)
    valid = w.valid.astype(np.float32)  # (B, K)
    task = pool.task_of[w.episode]  # (B,)
    obs = Observation(
        {c: torch.from_numpy(a[flat]) for c, a in pool.images.items()},
        None if pool.state is None else torch.from_numpy(pool.state[flat]),
    )
    goal_obs = None
    if goals:
        last = pool.ep_end[w.episode] - 1  # (B,) hindsight: the episode's final observation
        cmd = pool.has_goal[w.episode] & commanded  # (B,) the stored commanded goal instead
        images = {}
        for c in pool.goal_images or pool.images:
            img = pool.images[c][last] if c in pool.images else np.zeros((B, *pool.goal_images[c].shape[1:]), np.uint8)
            if c in pool.goal_images and cmd.any():
                img[cmd] = pool.goal_images[c][w.episode[cmd]]
            images[c] = torch.from_numpy(img)
        gstate_src = pool.achieved if pool.achieved is not None else pool.state
        gstate = None
        if gstate_src is not None:
            gs = gstate_src[last].astype(np.float32)
            if pool.goal_state is not None and cmd.any():
                gs[cmd] = pool.goal_state[w.episode[cmd]]
            gstate = torch.from_numpy(gs)
        goal_obs = Observation(images, gstate)
    row_scale = scale[task]  # (B,)
    return SequenceBatch(
        observations=obs,
        actions=torch.from_numpy(pool.action[w.steps] * valid[..., None]),
        rewards=torch.from_numpy(pool.reward[w.steps] * valid),
        returns_to_go=torch.from_numpy((rtg[w.steps] / row_scale[:, None] * valid).astype(np.float32)),
        timesteps=torch.from_numpy((w.steps - pool.ep_start[w.episode][:, None]) * w.valid),
        mask=torch.from_numpy(valid),
        goals=goal_obs,
        task_ids=torch.from_numpy(task),
        return_scale=torch.from_numpy(row_scale.astype(np.float32)),
    )


class SequenceSampler(Sampler):
    """The ``Sampler`` drawing ``SequenceBatch`` windows of ``length`` steps (same snapshot handling,
    prefetching, augmentation and exact resume); ``example_batch`` still gives a transition Batch
    (what ``ObservationSpec.from_batch`` reads)."""

    def __init__(
        self,
        view: LakeView,
        cfg: SamplerConfig,
        length: int,
        device: str | torch.device = "cpu",
        progress: bool = True,
        discount: float = 1.0,
    ):
        if length < 1:
            raise SamplerError(f"the window length must be >= 1, got {length}")
        if not 0 < discount <= 1:
            raise SamplerError(f"the return-to-go discount must be in (0, 1], got {discount}")
        self.discount = discount
        if cfg.relabel.p_task > 0:
            raise SamplerError("sequence windows keep their episode's task: set relabel.p_task=0")
        self.length = length
        self._stats_of: tuple[EpisodePool, np.ndarray, np.ndarray] | None = None
        super().__init__(view, cfg, device, progress)

    def _statistics(self) -> tuple[np.ndarray, np.ndarray]:
        if self._stats_of is None or self._stats_of[0] is not self.pool:  # a new pool (streaming swaps)
            self._stats_of = (self.pool, *return_statistics(self.pool, self.discount))
        return self._stats_of[1], self._stats_of[2]

    def sample_host(self) -> SequenceBatch:  # type: ignore[override]
        """One host SequenceBatch (uint8 images on the CPU), drawn synchronously."""
        rtg, scale = self._statistics()
        w = sample_windows(self.pool, self.cfg, self.length, self._rng, self.cfg.batch_size)
        rc = self.cfg.relabel
        batch = gather_windows(self.pool, w, rtg, scale, rc.uses_goals, rc.commanded > 0)
        self.batches_produced += 1
        self._maybe_swap()
        return batch

    def __iter__(self) -> Iterator[SequenceBatch]:  # type: ignore[override]
        return self

    def __enter__(self) -> SequenceSampler:
        return self

    def __next__(self) -> SequenceBatch:  # type: ignore[override]
        return super().__next__()  # type: ignore[return-value]

    def augment(self, batch: Any) -> Any:
        """DrQ random shift of every frame and goal image (uint8, on the device)."""
        if not isinstance(batch, SequenceBatch):
            return super().augment(batch)
        shift = self.shifter()
        if shift is None:
            return batch
        return dataclasses.replace(
            batch,
            observations=batch.observations.map_images(shift),
            goals=None if batch.goals is None else batch.goals.map_images(shift),
        )
