"""Learning checks: IQL and CQL from states on a tiny point-mass goal-reaching world.

The world: a point in [0, 1]², action = velocity in [-1, 1]² (a step moves 0.1·a), a goal in
[0.15, 0.85]², success (reward 1, terminal) when the point comes within 0.1 of the goal, at most
``HORIZON`` steps. Data: episodes of a noisy scripted expert and of uniform random actions, written
into a memory lake and sampled with the real sampler. Each learned deterministic policy is rolled
out in the same world from fixed starts and must succeed clearly more often than uniform random
actions (margin ``MARGIN``).
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import torch

from data_lake import Episode, Lake
from data_lake.batch import Observation
from data_lake.sampler import RelabelConfig, Sampler, SamplerConfig
from robot_rl.algos import ALGOS, AlgoConfig, CQLConfig, IQLConfig
from robot_rl.nets import ObservationSpec

HORIZON, SPEED, RADIUS = 25, 0.1, 0.1
MARGIN = 0.3
IMAGE = 32


def reset(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    goal = rng.uniform(0.15, 0.85, (n, 2))
    pos = rng.uniform(0.0, 1.0, (n, 2))
    while (far := np.linalg.norm(pos - goal, axis=1) < 0.4).any():  # start at least 0.4 away
        pos[far] = rng.uniform(0.0, 1.0, (int(far.sum()), 2))
    return pos.astype(np.float32), goal.astype(np.float32)


def step(pos: np.ndarray, action: np.ndarray) -> np.ndarray:
    return np.clip(pos + SPEED * np.clip(action, -1, 1), 0.0, 1.0).astype(np.float32)


def expert(pos: np.ndarray, goal: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    a = np.clip((goal - pos) / SPEED, -1, 1) + rng.normal(0, noise, pos.shape)
    return np.clip(a, -1, 1).astype(np.float32)


def render(pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """(N, 2) points and goals -> uint8 (N, IMAGE, IMAGE, 3): the point in red, the goal in green."""
    yy, xx = np.mgrid[0:IMAGE, 0:IMAGE].astype(np.float32) / (IMAGE - 1)
    img = np.full((len(pos), IMAGE, IMAGE, 3), 40, np.uint8)
    for p, channel in ((goal, 1), (pos, 0)):
        d2 = (yy[None] - p[:, 0, None, None]) ** 2 + (xx[None] - p[:, 1, None, None]) ** 2  # (N, H, W)
        img[..., channel] = np.maximum(img[..., channel], (255 * (d2 < 0.08**2)).astype(np.uint8))
    return img


def episode(seed: int, policy: str, images: bool) -> Episode:
    rng = np.random.default_rng(seed)
    pos, goal = reset(rng, 1)
    states, actions, rewards = [pos[0]], [], []
    for _ in range(HORIZON):
        a = expert(pos, goal, rng, 0.6) if policy == "expert" else rng.uniform(-1, 1, (1, 2)).astype(np.float32)
        pos = step(pos, a)
        reached = float(np.linalg.norm(pos - goal) < RADIUS)
        states.append(pos[0])
        actions.append(a[0])
        rewards.append(reached)
        if reached:
            break
    T = len(states)
    s = np.array(states, np.float32)
    return Episode.make(
        images={"top": render(s, np.repeat(goal, T, 0))} if images else {},
        state=np.concatenate([s, np.repeat(goal, T, 0)], 1),  # (T, 4): position, goal
        action=np.array([*actions, np.zeros(2, np.float32)], np.float32),  # the last step's action is unused
        reward=np.array([*rewards, 0.0], np.float32),
        is_terminal=bool(rewards[-1]),
        task="pointmass/reach",
        success=bool(rewards[-1]),
    )


@pytest.fixture(scope="module")
def state_lake() -> Lake:
    lake = Lake.create(f"memory://{uuid.uuid4().hex}")
    lake.append([episode(s, "expert" if s % 2 else "random", images=False) for s in range(300)])
    return lake


def evaluate(act, n: int = 200, seed: int = 12345, images: bool = False) -> float:
    """Success rate of ``act(observation) -> actions`` from n fixed starts."""
    rng = np.random.default_rng(seed)
    pos, goal = reset(rng, n)
    done = np.zeros(n, bool)
    for _ in range(HORIZON):
        state = torch.from_numpy(np.concatenate([pos, goal], 1))
        cams = {"top": torch.from_numpy(render(pos, goal)).permute(0, 3, 1, 2).float() / 255} if images else {}
        a = act(Observation(cams, state))
        pos = np.where(done[:, None], pos, step(pos, a))
        done |= np.linalg.norm(pos - goal, axis=1) < RADIUS
    return float(done.mean())


def random_success() -> float:
    rng = np.random.default_rng(0)
    return evaluate(lambda obs: rng.uniform(-1, 1, (obs.batch_size, 2)).astype(np.float32))


def train(lake: Lake, name: str, cfg: AlgoConfig, updates: int, images: bool = False, batch_size: int = 256):
    scfg = SamplerConfig(
        batch_size=batch_size,
        cameras=("top",) if images else (),
        use_state=not images,
        relabel=RelabelConfig(future=0, final=0, negative=0, task=1.0, gamma=cfg.gamma),
        augment_pad=0,
        seed=0,
    )
    start = time.perf_counter()
    with Sampler(lake.checkout(), scfg, progress=False) as sampler:
        batch = next(sampler)
        algo = ALGOS[name](cfg, ObservationSpec.from_batch(batch))
        for _ in range(updates):
            metrics = algo.update(batch)
            batch = next(sampler)
    elapsed = time.perf_counter() - start
    success = evaluate(lambda obs: algo.act(obs).numpy(), images=images)
    return success, elapsed, metrics


STATE_CASES = {  # (config, updates): about 15 s and 20 s on 2 CPU cores
    "iql": (IQLConfig(hidden=(256, 256), gamma=0.9, expectile=0.7, beta=10.0, actor_lr=1e-3), 2000),
    "cql": (
        CQLConfig(
            hidden=(128, 128),
            gamma=0.9,
            cql_alpha=1.0,
            num_samples=4,
            backup_entropy=False,  # with sparse rewards in [0, 1] an entropy bonus would dominate Q
            alpha_init=0.1,
            actor_lr=1e-3,
            critic_lr=1e-3,
        ),
        1500,
    ),
}


@pytest.mark.parametrize("name", sorted(STATE_CASES))
def test_learns_goal_reaching_from_states(name: str, state_lake: Lake) -> None:
    cfg, updates = STATE_CASES[name]
    baseline = random_success()
    success, elapsed, _ = train(state_lake, name, cfg, updates)
    print(f"{name}: success {success:.2f} vs random {baseline:.2f} ({updates} updates, {elapsed:.1f}s)")
    assert success >= baseline + MARGIN, f"{name} success {success:.2f}, random {baseline:.2f}"
