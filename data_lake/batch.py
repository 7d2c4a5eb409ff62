"""The one typed Batch that flows from the sampler to every loss.

On the host a Batch holds uint8 images (B, H, W, 3) in (pinned) CPU tensors; ``Batch.to(device)``
copies it (non-blocking) and only then converts images to float32 in [0, 1], channels-first
(B, 3, H, W), so the host never touches four bytes per pixel. Nothing is unpacked by position.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Callable

# goal_source codes: which relabeling rule produced each row
FUTURE, FINAL, NEGATIVE, COMMANDED, TASK, CURRENT = 0, 1, 2, 3, 4, 5
GOAL_SOURCES = {
    "future": FUTURE,
    "final": FINAL,
    "negative": NEGATIVE,
    "commanded": COMMANDED,
    "task": TASK,
    "current": CURRENT,
}


@dataclasses.dataclass(frozen=True)
class Observation:
    """Camera images by name and an optional flat state vector."""

    images: dict[str, torch.Tensor]  # uint8 (B, H, W, 3) on the host; float (B, 3, H, W) on the device
    state: torch.Tensor | None  # (B, S) float32

    def to(self, device: torch.device | str, non_blocking: bool = True, float_images: bool = True) -> Observation:
        """Move to ``device``; then (``float_images``) uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
        images = {}
        for cam, img in self.images.items():
            img = img.to(device, non_blocking=non_blocking)
            if float_images and img.dtype == torch.uint8:
                img = img.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
                img = img.contiguous(memory_format=torch.channels_last)
            images[cam] = img
        state = None if self.state is None else self.state.to(device, non_blocking=non_blocking)
        return Observation(images, state)

    def map_images(self, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> Observation:
        return Observation({c: fn(c, x) for c, x in self.images.items()}, self.state)

    def pin_memory(self) -> Observation:
        return Observation(
            {c: x.pin_memory() for c, x in self.images.items()},
            None if self.state is None else self.state.pin_memory(),
        )

    @property
    def batch_size(self) -> int:
        if self.state is not None:
            return int(self.state.shape[0])
        return int(next(iter(self.images.values())).shape[0])


@dataclasses.dataclass(frozen=True)
class Batch:
    """A batch of transitions (s, a, r, d, s', g, k) with hindsight-relabeling bookkeeping."""

    observations: Observation
    actions: torch.Tensor  # (B, A) float32
    rewards: torch.Tensor  # (B,) float32
    terminals: torch.Tensor  # (B,) float32: 1 ends bootstrapping
    next_observations: Observation
    goals: Observation | None  # goal images / goal state, None when the sampler has no goals
    task_ids: torch.Tensor  # (B,) int64, index into the sampler's task vocabulary
    mc_returns: torch.Tensor  # (B,) float32 behaviour-policy Monte-Carlo return (Cal-QL)
    goal_source: torch.Tensor  # (B,) int64, one of GOAL_SOURCES
    actor_goals: Observation | None = None  # the actor's own goals (``RelabelConfig.actor_goals``); None: ``goals``
    next_actions: torch.Tensor | None = None  # (B, A) the data's action at s' (ReBRAC's critic penalty); None: unknown

    def to(self, device: torch.device | str, non_blocking: bool = True, float_images: bool = True) -> Batch:
        """Copy to ``device``; images become float (B, 3, H, W) in [0, 1] there (unless ``float_images``
        is False: the sampler augments uint8 images on the device first)."""

        def mv(x: torch.Tensor) -> torch.Tensor:
            return x.to(device, non_blocking=non_blocking)

        return Batch(
            observations=self.observations.to(device, non_blocking, float_images),
            actions=mv(self.actions),
            rewards=mv(self.rewards),
            terminals=mv(self.terminals),
            next_observations=self.next_observations.to(device, non_blocking, float_images),
            goals=None if self.goals is None else self.goals.to(device, non_blocking, float_images),
            task_ids=mv(self.task_ids),
            mc_returns=mv(self.mc_returns),
            goal_source=mv(self.goal_source),
            actor_goals=None if self.actor_goals is None else self.actor_goals.to(device, non_blocking, float_images),
            next_actions=None if self.next_actions is None else mv(self.next_actions),
        )

    def pin_memory(self) -> Batch:
        return Batch(
            observations=self.observations.pin_memory(),
            actions=self.actions.pin_memory(),
            rewards=self.rewards.pin_memory(),
            terminals=self.terminals.pin_memory(),
            next_observations=self.next_observations.pin_memory(),
            goals=None if self.goals is None else self.goals.pin_memory(),
            task_ids=self.task_ids.pin_memory(),
            mc_returns=self.mc_returns.pin_memory(),
            goal_source=self.goal_source.pin_memory(),
            actor_goals=None if self.actor_goals is None else self.actor_goals.pin_memory(),
            next_actions=None if self.next_actions is None else self.next_actions.pin_memory(),
        )

    def __len__(self) -> int:
        return int(self.actions.shape[0])


def _cat_obs(parts: list[Observation]) -> Observation:
    cams = set(parts[0].images)
    if any(set(p.images) != cams or (p.state is None) != (parts[0].state is None) for p in parts):
        raise ValueError("batches to concatenate have different cameras or state presence")
    return Observation(
        {c: torch.cat([p.images[c] for p in parts]) for c in sorted(cams)},
        None if parts[0].state is None else torch.cat([p.state for p in parts if p.state is not None]),
    )


def cat_batches(batches: list[Batch]) -> Batch:
    """Rows of several batches with the same structure, in order (mixing replay sources)."""
    if not batches:
        raise ValueError("cat_batches needs at least one batch")
    if len(batches) == 1:
        return batches[0]
    if len({b.goals is None for b in batches}) != 1 or len({b.actor_goals is None for b in batches}) != 1:
        raise ValueError("batches to concatenate must all have goals (and actor goals) or all have none")
    return Batch(
        observations=_cat_obs([b.observations for b in batches]),
        actions=torch.cat([b.actions for b in batches]),
        rewards=torch.cat([b.rewards for b in batches]),
        terminals=torch.cat([b.terminals for b in batches]),
        next_observations=_cat_obs([b.next_observations for b in batches]),
        goals=None if batches[0].goals is None else _cat_obs([b.goals for b in batches if b.goals is not None]),
        task_ids=torch.cat([b.task_ids for b in batches]),
        mc_returns=torch.cat([b.mc_returns for b in batches]),
        goal_source=torch.cat([b.goal_source for b in batches]),
        actor_goals=None
        if batches[0].actor_goals is None
        else _cat_obs([b.actor_goals for b in batches if b.actor_goals is not None]),
        next_actions=None
        if any(b.next_actions is None for b in batches)
        else torch.cat([b.next_actions for b in batches if b.next_actions is not None]),
    )
