"""OGBench datasets generated here, with OGBench's own environments and oracles.

OGBench's datasets cannot be downloaded on our machines, so we regenerate them: the same
environments (``gymnasium.make('<env>', terminate_at_goal=False, mode='data_collection',
max_episode_steps=1001)``), the oracles OGBench ships, and the settings of OGBench's
``data_gen_scripts/commands.sh``:

    dataset                        oracle                                      noise
    cube-single-play-v0            CubePlanOracle (open-loop keyframe plans)   0.1, smoothing 0.5
    cube-single-noisy-v0           CubeMarkovOracle (closed loop, min_norm     per episode xi ~ U(0, 0.1);
                                   0.4)                                        N(0, [xi, xi, xi, 3xi, 10xi]);
                                                                               random action w.p. 0.1
    pointmaze-medium-navigate-v0   unit step toward the maze's BFS subgoal     N(0, 0.5); a new random
                                   (env.get_oracle_subgoal)                    vertex-cell goal on success
    visual-cube-single-*-v0        as cube-single-*, 64x64 RGB observations    (rendering: a GPU machine)

Every trajectory lasts ``max_episode_steps`` steps (a time limit, never success); the oracle gets a
new target whenever it finishes one. ``generate`` returns (train, val) in OGBench's ``.npz``
layout (``data_lake.ingest.ogbench``), val holding ``episodes // 10`` more trajectories, as
OGBench. Same seed, same arrays: the oracles draw from numpy's global RNG, which is seeded for the
duration of the call and restored afterwards; our own draws (noise, cells, random actions) come
from a ``numpy.random.Generator`` of the same seed; the environment's RNG is seeded at its first
reset. ``write_to_lake`` stores generated arrays through the ingest reader's episode building, so
generated and ingested datasets land identically.

Speed on our 2-core CPU machine (steps/s per dataset): ``docs/ingest.md``, "OGBench datasets".
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from data_lake.ingest.ogbench import DatasetName, Layout, check_arrays, episodes_from_arrays
from data_lake.lake import Lake, WriteResult


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How one OGBench dataset is collected (OGBench's ``commands.sh`` settings)."""

    env: str
    kind: str  # play | noisy | navigate
    noise: float
    noise_smoothing: float = 0.5  # play: PlanOracle's action-noise smoothing
    min_norm: float = 0.4  # noisy: MarkovOracle's minimum action norm
    p_random_action: float = 0.0
    max_episode_steps: int = 1001
    episodes: int = 1000  # OGBench's size (train; val is episodes // 10 more)

    def __post_init__(self) -> None:
        if self.kind not in ("play", "noisy", "navigate"):
            raise ValueError(f"kind must be play, noisy or navigate, found {self.kind!r}")
        if not 0.0 <= self.p_random_action <= 1.0:
            raise ValueError(f"p_random_action must be in [0, 1], found {self.p_random_action}")


DATASETS: dict[str, DatasetSpec] = {
    "cube-single-play-v0": DatasetSpec("cube-single-v0", "play", noise=0.1),
    "cube-single-noisy-v0": DatasetSpec("cube-single-v0", "noisy", noise=0.1, p_random_action=0.1),
    "pointmaze-medium-navigate-v0": DatasetSpec("pointmaze-medium-v0", "navigate", noise=0.5),
    "visual-cube-single-play-v0": DatasetSpec("visual-cube-single-v0", "play", noise=0.1),
    "visual-cube-single-noisy-v0": DatasetSpec("visual-cube-single-v0", "noisy", noise=0.1, p_random_action=0.1),
}


def spec_of(dataset: str) -> tuple[str, DatasetSpec]:
    """The full dataset name (``-v0`` may be left off) and its spec; a KeyError lists the known ones."""
    name = dataset if dataset in DATASETS else f"{dataset}-v0"
    if name not in DATASETS:
        raise KeyError(f"unknown OGBench dataset {dataset!r}; supported: {', '.join(DATASETS)}")
    return name, DATASETS[name]


def settings(dataset: str, episodes: int, seed: int, max_episode_steps: int = 1001) -> dict[str, Any]:
    """Everything that determines a generated dataset (its provenance)."""
    name, spec = spec_of(dataset)
    return {
        "dataset": name,
        **dataclasses.asdict(spec),
        "episodes": episodes,
        "val_episodes": episodes // 10,
        "max_episode_steps": max_episode_steps,
        "seed": seed,
        "ogbench": importlib.metadata.version("ogbench"),
        "mujoco": importlib.metadata.version("mujoco"),
    }


@contextlib.contextmanager
def global_numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG (OGBench's oracles and mazes draw from it) and restore it after."""
    saved = np.random.get_state()  # noqa: NPY002  (the oracles use the global RNG)
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(saved)  # noqa: NPY002


# ---------------------------------------------------------------------------- collection
def _make_env(spec: DatasetSpec, max_episode_steps: int) -> Any:
    import gymnasium
    import ogbench  # noqa: F401  (registers the environments)

    kwargs: dict[str, Any] = {"mode": "data_collection"} if spec.kind in ("play", "noisy") else {}
    return gymnasium.make(spec.env, terminate_at_goal=False, max_episode_steps=max_episode_steps, **kwargs)


def _cube_oracle(env: Any, spec: DatasetSpec) -> Any:
    if spec.kind == "play":
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

        return CubePlanOracle(env=env, noise=spec.noise, noise_smoothing=spec.noise_smoothing)
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle

    return CubeMarkovOracle(env=env, min_norm=spec.min_norm)


def _cube_trajectory(
    env: Any, oracle: Any, spec: DatasetSpec, rng: np.random.Generator, seed: int | None
) -> list[dict[str, np.ndarray]]:
    """One trajectory of a single-cube environment: the oracle moves the cube to target after
    target until the time limit."""
    ob, info = env.reset(seed=seed)
    xi = rng.uniform(0, spec.noise) if spec.kind == "noisy" else 0.0
    noise_std = np.array([xi, xi, xi, 3 * xi, 10 * xi])  # x, y, z, yaw, gripper
    oracle.reset(ob, info)
    space = env.action_space
    rows, done = [], False
    while not done:
        if rng.random() < spec.p_random_action:  # uniform in the box (ManipSpace's action_space
            action = rng.uniform(space.low, space.high)  # is a fresh, unseeded Box at each access)
        else:
            action = np.asarray(oracle.select_action(ob, info), dtype=np.float64)
            if spec.kind == "noisy":
                action = action + rng.normal(0, noise_std, action.shape)
        action = np.clip(action, -1, 1)
        next_ob, _, terminated, truncated, info = env.step(action)
        done = bool(terminated or truncated)
        if oracle.done:
            oracle.reset(*env.unwrapped.set_new_target(p_stack=0.0))
        row = {"observations": ob, "actions": action, "terminals": done}
        row |= {"qpos": info["prev_qpos"], "qvel": info["prev_qvel"]}
        if "prev_button_states" in info:
            row["button_states"] = info["prev_button_states"]
        rows.append(row)
        ob = next_ob
    return rows


def _maze_cells(maze_map: np.ndarray) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Free cells, and the free cells that are not the middle of a straight corridor (vertices)."""
    free, vertices = [], []
    for i, j in zip(*np.nonzero(maze_map == 0), strict=True):
        i, j = int(i), int(j)
        free.append((i, j))
        up_down = maze_map[i - 1, j] == 0 and maze_map[i + 1, j] == 0
        left_right = maze_map[i, j - 1] == 0 and maze_map[i, j + 1] == 0
        corridor = (up_down and maze_map[i, j - 1] == 1 and maze_map[i, j + 1] == 1) or (
            left_right and maze_map[i - 1, j] == 1 and maze_map[i + 1, j] == 1
        )
        if not corridor:
            vertices.append((i, j))
    return free, vertices


def _maze_trajectory(
    env: Any, spec: DatasetSpec, rng: np.random.Generator, seed: int | None
) -> list[dict[str, np.ndarray]]:
    """One navigate trajectory: from a random free cell toward random vertex cells, a new goal
    each time one is reached; the action is the unit direction to the BFS subgoal plus noise."""
    u = env.unwrapped
    free, vertices = _maze_cells(u.maze_map)
    init_ij = free[rng.integers(len(free))]
    goal_ij = vertices[rng.integers(len(vertices))]
    ob, _ = env.reset(seed=seed, options={"task_info": {"init_ij": init_ij, "goal_ij": goal_ij}})
    rows, done = [], False
    while not done:
        subgoal_xy, _ = u.get_oracle_subgoal(u.get_xy(), u.cur_goal_xy)
        direction = subgoal_xy - u.get_xy()
        direction = direction / (np.linalg.norm(direction) + 1e-6)
        action = np.clip(direction + rng.normal(0, spec.noise, 2), -1, 1)
        next_ob, _, terminated, truncated, info = env.step(action)
        done = bool(terminated or truncated)
        if info["success"]:
            u.set_goal(vertices[rng.integers(len(vertices))])
        rows.append({"observations": ob, "actions": action, "terminals": done})
        rows[-1] |= {"qpos": info["prev_qpos"], "qvel": info["prev_qvel"]}
        ob = next_ob
    return rows


def _stack(rows: list[dict[str, Any]], like: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Rows -> OGBench's arrays and dtypes; ``like`` gives the shapes when there are no rows."""
    if not rows:
        assert like is not None
        return {k: np.zeros((0, *v.shape[1:]), v.dtype) for k, v in like.items()}
    out = {}
    for k in rows[0]:
        v = [r[k] for r in rows]
        if k == "observations":
            dtype: Any = np.uint8 if np.asarray(v[0]).dtype == np.uint8 else np.float32
        else:
            dtype = {"terminals": bool, "button_states": np.int64}.get(k, np.float32)
        out[k] = np.asarray(v, dtype=dtype)
    return out


def generate(
    dataset: str, episodes: int, seed: int, max_episode_steps: int = 1001, progress: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(train, val) arrays of ``episodes`` (+ ``episodes // 10`` val) trajectories of
    ``max_episode_steps`` steps, in OGBench's npz layout and dtypes; deterministic for a seed."""
    _, spec = spec_of(dataset)
    if episodes < 1 or max_episode_steps < 2:
        raise ValueError(f"need episodes >= 1 and max_episode_steps >= 2, found {episodes}, {max_episode_steps}")
    n_val = episodes // 10
    with global_numpy_seed(seed):
        env = _make_env(spec, max_episode_steps)
        env.action_space.seed(seed)
        rng = np.random.default_rng(seed)  # our own draws; the oracles' come from the global RNG
        oracle = _cube_oracle(env, spec) if spec.kind != "navigate" else None
        trajs: list[list[dict[str, Any]]] = []
        bar = tqdm(total=(episodes + n_val) * max_episode_steps, desc=dataset, unit="step", disable=not progress)
        try:
            for k in range(episodes + n_val):
                first_seed = seed if k == 0 else None
                if oracle is not None:
                    trajs.append(_cube_trajectory(env, oracle, spec, rng, first_seed))
                else:
                    trajs.append(_maze_trajectory(env, spec, rng, first_seed))
                bar.update(len(trajs[-1]))
        finally:
            bar.close()
            env.close()
    train = _stack([r for t in trajs[:episodes] for r in t])
    val = _stack([r for t in trajs[episodes:] for r in t], like=train)
    return train, val


def measure(dataset: str, steps: int = 500, seed: int = 0) -> float:
    """Generation speed in steps/s (one trajectory of ``steps`` steps, environment creation excluded)."""
    _, spec = spec_of(dataset)
    with global_numpy_seed(seed):
        env = _make_env(spec, steps)
        oracle = _cube_oracle(env, spec) if spec.kind != "navigate" else None
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        if oracle is not None:
            rows = _cube_trajectory(env, oracle, spec, rng, seed)
        else:
            rows = _maze_trajectory(env, spec, rng, seed)
        dt = time.perf_counter() - t0
        env.close()
    return len(rows) / dt


# ---------------------------------------------------------------------------- into the lake
def write_to_lake(
    lake: Lake,
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    meta: dict[str, Any],
    *,
    branch: str = "main",
    message: str | None = None,
    author: str | None = None,
) -> WriteResult:
    """Append generated arrays (``generate``) as episodes in one commit, built exactly as the
    ``ogbench`` ingest reader builds them; ``meta`` is ``settings(...)`` (the provenance)."""
    name = DatasetName.parse(meta["dataset"])
    episodes, labels = [], []
    for split, arrays in (("train", train), ("val", val)):
        if len(arrays["observations"]) == 0:
            continue
        where = f"generated {name.dataset} seed {meta['seed']} ({split})"
        check_arrays(arrays, where)
        prov = {
            "source": "generated by robot-rl (tasks.ogbench_data)",
            "format": "ogbench",
            "reader": "tasks.ogbench_data",
            "dataset": name.dataset,
            "env": name.env,
            "split": split,
            "seed": meta["seed"],
            "settings": meta,
        }
        src = f"generated:{name.dataset}/seed{meta['seed']}"
        eps = episodes_from_arrays(arrays, name, split, prov, Layout(), source=src)
        episodes += eps
        labels += [f"{src}#{split}{i}" for i in range(len(eps))]
    return lake.append(
        episodes,
        branch=branch,
        message=message or f"generate {name.dataset}: {len(episodes)} episodes, seed {meta['seed']}",
        metadata={"ogbench": {"generated": meta}},
        author=author,
        labels=labels,
    )
