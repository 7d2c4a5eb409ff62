"""Contract tests for the simulation worlds (real MuJoCo, real offscreen rendering on CPU).

Every world must: speak the Gymnasium API with the robot-rl dict observation, reuse one renderer,
be deterministic for a seed (bit for bit, images included) and restore its state bit-exactly after
rendering a goal image. Fetch worlds step at ~100/s on one core, so their checks are short.
"""

from __future__ import annotations

import os

import mujoco
import numpy as np
import pytest

import sim
from sim import render as sim_render
from sim.base import RobotEnv, preserved_state
from sim.robotics import FetchEnv, PointMazeEnv
from sim.tabletop import BLOCK_HALF, BLOCKS, TabletopEnv, TabletopGoal


class HoldStill:
    """Minimal tabletop objective: keep the red block where it is (never succeeds)."""

    goal_dim = 3

    def sample_goal(self, env: TabletopEnv, rng: np.random.Generator) -> TabletopGoal:
        red = env.block_pos("red")
        moved = red + np.array([0.05, 0.0, 0.0])
        return TabletopGoal(red, {"red": moved}, red + np.array([0.0, 0.0, 0.1]), 0.0)

    def achieved_goal(self, env: TabletopEnv) -> np.ndarray:
        return env.block_pos("red")

    def is_success(self, env: TabletopEnv) -> bool:
        return False


def make_world(kind: str, seed: int = 0, cameras: tuple[str, ...] | None = None, size: int = 64) -> RobotEnv:
    if kind == "tabletop":
        return TabletopEnv(HoldStill(), image_size=size, cameras=cameras or ("front", "wrist"), seed=seed)
    if kind == "pointmaze":
        return PointMazeEnv(image_size=size, cameras=cameras, seed=seed)
    return FetchEnv(kind, image_size=size, cameras=cameras, seed=seed)


WORLDS = ["tabletop", "pointmaze", "FetchPush-v4"]


def physics_state(env: RobotEnv) -> np.ndarray:
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    state = np.empty(mujoco.mj_stateSize(env.model, spec))
    mujoco.mj_getState(env.model, env.data, state, spec)
    return state


def assert_obs_valid(env: RobotEnv, obs: dict) -> None:
    assert set(obs) == {"images", "state", "achieved_goal", "desired_goal", "scene"}
    assert env.observation_space.contains(obs), "observation outside observation_space"
    assert set(obs["images"]) == set(env.camera_names)
    for image in obs["images"].values():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.std() > 1.0, "image is blank"
    for key in ("state", "achieved_goal", "desired_goal", "scene"):
        assert obs[key].dtype == np.float32 and np.all(np.isfinite(obs[key]))
    assert obs["achieved_goal"].shape == obs["desired_goal"].shape
    np.testing.assert_array_equal(obs["scene"], env.scene_state().astype(np.float32))


def rollout(env: RobotEnv, seed: int, steps: int, action_seed: int = 0) -> list[bytes]:
    """Bytes of every observation of a seeded episode driven by seeded random actions."""
    rng = np.random.default_rng(action_seed)
    obs, _ = env.reset(seed=seed)
    frames = [obs]
    for _ in range(steps):
        obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        frames.append(obs)
    out = []
    for o in frames:
        out += [o["images"][c].tobytes() for c in sorted(o["images"])]
        out += [o[k].tobytes() for k in ("state", "achieved_goal", "desired_goal")]
    return out


@pytest.mark.parametrize("kind", WORLDS)
def test_gymnasium_contract(kind: str) -> None:
    env = make_world(kind)
    obs, info = env.reset(seed=3)
    assert_obs_valid(env, obs)
    assert isinstance(info["is_success"], bool)
    renderer = env.renderer._renderer
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert_obs_valid(env, obs)
        assert reward == float(info["is_success"]) and isinstance(info["is_success"], bool)
        assert terminated is False and truncated is False
    assert env.renderer._renderer is renderer, "the renderer must be reused, not recreated"
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == obs["images"][env.camera_names[0]].shape
    np.testing.assert_array_equal(frame, obs["images"][env.camera_names[0]])
    env.close()


def test_truncation_at_max_episode_steps() -> None:
    env = TabletopEnv(HoldStill(), max_episode_steps=4, seed=0)
    env.reset()
    flags = [env.step(np.zeros(4))[3] for _ in range(4)]
    assert flags == [False, False, False, True]
    env.close()


@pytest.mark.parametrize("size", [32, 96])
def test_image_size_and_camera_choice(size: int) -> None:
    env = make_world("tabletop", cameras=("wrist",), size=size)
    obs, _ = env.reset(seed=0)
    assert list(obs["images"]) == ["wrist"] and obs["images"]["wrist"].shape == (size, size, 3)
    env.close()


def test_unknown_camera_is_an_error() -> None:
    with pytest.raises(ValueError, match="front"):
        TabletopEnv(HoldStill(), cameras=("side",))
    with pytest.raises(ValueError, match="top"):
        PointMazeEnv(cameras=("front",))


def test_bad_actions_are_rejected() -> None:
    env = make_world("tabletop")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0, 0, 0]))
    env.close()


@pytest.mark.parametrize("kind", WORLDS)
def test_same_seed_same_episode_bytes(kind: str) -> None:
    steps = 15 if kind == "FetchPush-v4" else 30
    a, b = make_world(kind), make_world(kind)
    first = rollout(a, seed=7, steps=steps)
    assert first == rollout(b, seed=7, steps=steps)
    assert first != rollout(b, seed=8, steps=steps), "a different seed must give a different episode"
    a.close()
    b.close()


def test_constructor_seed_drives_the_first_reset() -> None:
    a, b = make_world("tabletop", seed=11), make_world("tabletop")
    obs_a, _ = a.reset()
    obs_b, _ = b.reset(seed=11)
    np.testing.assert_array_equal(obs_a["images"]["front"], obs_b["images"]["front"])
    a.close()
    b.close()


@pytest.mark.parametrize("kind", [*WORLDS, "FetchReach-v4"])
def test_goal_rendering_restores_state_bit_exactly(kind: str) -> None:
    steps = 6 if kind.startswith("Fetch") else 20
    twin_a, twin_b = make_world(kind), make_world(kind)
    rng = np.random.default_rng(0)
    twin_a.reset(seed=5)
    twin_b.reset(seed=5)
    for t in range(steps):
        if t % 3 == 1:
            before = physics_state(twin_a)
            xpos = twin_a.data.xpos.copy()
            goal = twin_a.render_goal()
            assert set(goal) == set(twin_a.camera_names)
            np.testing.assert_array_equal(physics_state(twin_a), before)
            np.testing.assert_array_equal(twin_a.data.xpos, xpos)
        action = rng.uniform(-1, 1, twin_a.action_space.shape)
        obs_a, *_ = twin_a.step(action)
        obs_b, *_ = twin_b.step(action)
        for cam in obs_a["images"]:
            np.testing.assert_array_equal(obs_a["images"][cam], obs_b["images"][cam])
        np.testing.assert_array_equal(obs_a["state"], obs_b["state"])
    twin_a.close()
    twin_b.close()


@pytest.mark.parametrize("kind", ["tabletop", "pointmaze", "FetchPush-v4"])
def test_goal_image_shows_a_different_configuration(kind: str) -> None:
    env = make_world(kind)
    obs, _ = env.reset(seed=2)
    goal = env.render_goal()
    first = env.camera_names[0]
    assert goal[first].dtype == np.uint8
    assert np.abs(goal[first].astype(int) - obs["images"][first]).mean() > 0.2
    assert env.render_goal()[first].tobytes() == goal[first].tobytes(), "goal images are deterministic"
    env.close()


def test_tabletop_reset_distribution() -> None:
    env = make_world("tabletop")
    for seed in range(10):
        env.reset(seed=seed)
        blocks = [env.block_pos(b) for b in BLOCKS]
        for i, p in enumerate(blocks):
            assert abs(p[2] - BLOCK_HALF) < 1e-9 and np.all(np.abs(p[:2]) <= 0.16)
            assert np.linalg.norm(p[:2] - env.pad_pos()[:2]) >= 0.09
            for q in blocks[:i]:
                assert np.linalg.norm(p[:2] - q[:2]) >= 0.10
        g = env.gripper_pos()
        assert np.all(np.abs(g[:2]) <= 0.1) and 0.12 <= g[2] <= 0.16
        assert env.finger_gap() == pytest.approx(0.08)
    env.close()


def test_tabletop_action_moves_the_gripper_by_scale() -> None:
    env = make_world("tabletop")
    env.reset(seed=0)
    start = env.gripper_pos()
    for _ in range(5):
        env.step(np.array([1.0, 0.0, 0.0, 1.0]))
    mocap = env.data.mocap_pos[env.model.body("ee_mocap").mocapid[0]]
    np.testing.assert_allclose(mocap - start, [5 * 0.04, 0.0, 0.0], atol=1e-9)
    for _ in range(5):  # the gripper follows the mocap through the connect constraint
        env.step(np.array([0.0, 0.0, 0.0, -1.0]))
    np.testing.assert_allclose(env.gripper_pos(), mocap, atol=0.003)
    assert env.finger_gap() < 0.005, "gripper -1 closes the fingers"
    env.close()


def test_preserved_state_restores_everything() -> None:
    env = make_world("tabletop")
    env.reset(seed=1)
    env.step(np.array([0.3, 0.2, -0.5, 0.0]))
    before = physics_state(env)
    with preserved_state(env.model, env.data):
        env.data.qpos[:] = 0.0
        env.data.mocap_pos[:] = 1.0
        env.data.time = 123.0
        mujoco.mj_step(env.model, env.data)
    np.testing.assert_array_equal(physics_state(env), before)
    env.close()


def test_backend_is_chosen_before_mujoco_import() -> None:
    assert os.environ["MUJOCO_GL"] in ("egl", "osmesa")
    assert sim.BACKEND == os.environ["MUJOCO_GL"]


@pytest.mark.parametrize(
    ("backend", "names"),
    [("disabled", ["libegl1", "libosmesa6"]), ("egl", ["libegl1", "osmesa"]), ("osmesa", ["libosmesa6"])],
)
def test_backend_error_names_the_missing_library(backend: str, names: list[str], monkeypatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", backend)
    message = str(sim_render._backend_error(RuntimeError("no context")))
    for name in names:
        assert name in message
    assert "apt-get install" in message


def test_free_camera_validates() -> None:
    with pytest.raises(ValueError, match="distance"):
        sim.FreeCamera((0.0, 0.0, 0.0), 0.0, 0.0, -45.0)


def test_renderer_rejects_unknown_named_camera() -> None:
    env = make_world("tabletop")
    with pytest.raises(KeyError, match="front"):
        sim.CameraRenderer(env.model, {"x": "no_such_camera"})
    with pytest.raises(KeyError, match="unknown camera"):
        env.renderer.render(env.data, "side")
    env.close()
