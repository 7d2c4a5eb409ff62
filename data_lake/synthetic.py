"""Deterministic synthetic episodes for tests, the lake benchmark and the lake tour.

Each episode draws three coloured squares gliding over a shaded table (flat colours and smooth
gradients, like a simple MuJoCo render) with a matching state, action and achieved goal. The same
seed gives the same bytes, so the same episode id.
"""

from __future__ import annotations

import numpy as np

from data_lake.episode import Episode

COLOURS = np.array([[200, 40, 40], [40, 180, 60], [50, 70, 210]], dtype=np.float32)


def synthetic_episode(
    seed: int,
    length: int = 50,
    size: int = 64,
    cameras: tuple[str, ...] = ("front",),
    task: str = "synthetic/push",
    with_goal: bool = True,
    noise: float = 0.0,
) -> Episode:
    """One episode: ``cameras`` uint8 (length, size, size, 3), state (6,), action (4,)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    table = np.stack([110 + 50 * yy, 100 + 30 * xx, 90 + 20 * yy * xx], -1)
    start = rng.uniform(0.15, 0.85, (3, 2)).astype(np.float32)
    vel = rng.normal(0, 0.01, (3, 2)).astype(np.float32)
    t = np.arange(length, dtype=np.float32)[:, None, None]
    pos = np.clip(start[None] + vel[None] * t, 0.05, 0.95)  # (T, 3, 2)
    half = 0.07

    def render(p: np.ndarray, shade: float) -> np.ndarray:
        img = table.copy()
        for k in range(3):
            m = (np.abs(yy - p[k, 0]) < half) & (np.abs(xx - p[k, 1]) < half)
            img[m] = COLOURS[k] * (0.85 + 0.15 * yy[m, None]) * shade
        if noise:
            img += rng.normal(0, noise, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)

    images = {cam: np.stack([render(pos[i], 1.0 - 0.1 * c) for i in range(length)]) for c, cam in enumerate(cameras)}
    state = np.concatenate([pos[:, 0], vel[None, 0].repeat(length, 0)], axis=1).astype(np.float32)  # (T, 4)
    state = np.concatenate([state, np.sin(t[:, 0] / 7.0).repeat(2, 1)], axis=1).astype(np.float32)  # (T, 6)
    action = np.clip(rng.normal(0, 0.5, (length, 4)), -1, 1).astype(np.float32)
    achieved = pos[:, 0].astype(np.float32)  # (T, 2): the red block
    goal = pos[-1]
    reward = (np.linalg.norm(achieved - goal[0], axis=1) < 0.02).astype(np.float32)
    return Episode.make(
        images=images,
        state=state,
        action=action,
        reward=reward,
        timestamp_ns=np.arange(length, dtype=np.int64) * 50_000_000 + seed * 10**12,
        achieved_goal=achieved,
        goal_images={cam: images[cam][-1].copy() for cam in cameras} if with_goal else None,
        goal_state=goal[0].astype(np.float32) if with_goal else None,
        task=task,
        success=bool(reward[-1] > 0),
        source=f"synthetic:seed={seed}",
        robot="synthetic",
        metadata={"seed": seed},
    )
