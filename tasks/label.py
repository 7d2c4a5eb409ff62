"""Success labels from stored simulator states: run a task's success detector over lake episodes.

Episodes collected with ``robot-rl collect`` store the full MuJoCo state of every step
(``sim_state``, mjSTATE_INTEGRATION: qpos, qvel, act, mocap poses, time). To label episode ``e``
for task ``k``: put the simulator in the episode's first state, derive task ``k``'s goal from that
scene (``objective.sample_goal``, e.g. the pad under a push, the red block's start for reach),
then set every stored state in turn and ask ``k``'s detector. The labels are what MT-Opt's task
relabeling reads (``Lake.label``; ``robot-rl lake label --task NAME``).

Only tasks whose goal is a function of the initial scene can be relabeled onto other episodes:
a task with a random goal per episode (``tabletop/move_green_to_goal``) or whose goal lives
outside the simulator state (the gymnasium-robotics tasks) has no defined success on another
episode, and asking for it is an error that says so.
"""

from __future__ import annotations

from collections.abc import Callable

import mujoco
import numpy as np

from data_lake.segment import SegmentData
from sim.tabletop import TabletopEnv
from tasks.core import get


class LabelError(ValueError):
    pass


def detector_over_states(task_name: str) -> Callable[[SegmentData], np.ndarray]:
    """``segment -> bool (T,)``: task ``task_name``'s success at every stored step."""
    task = get(task_name)
    env = task.make_env(image_size=16)
    if not isinstance(env, TabletopEnv):
        raise LabelError(
            f"{task_name}: its goal is not part of the stored simulator state, so it cannot be "
            "relabeled onto other episodes; labels work for the tabletop tasks with scene-defined goals"
        )
    a = env.objective.sample_goal
    probe_rng = [np.random.default_rng(s) for s in (1, 2)]
    env.reset(seed=0)
    if not np.array_equal(a(env, probe_rng[0]).desired_goal, a(env, probe_rng[1]).desired_goal):
        raise LabelError(f"{task_name} draws a random goal per episode, so its success on another episode is undefined")
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    size = mujoco.mj_stateSize(env.model, spec)

    def set_state(s: np.ndarray) -> None:
        mujoco.mj_setState(env.model, env.data, s, spec)
        mujoco.mj_forward(env.model, env.data)

    def detect(seg: SegmentData) -> np.ndarray:
        states = seg.steps.get("sim_state")
        if states is None:
            raise LabelError(
                f"segment {seg.name} stores no sim_state; labels need episodes recorded with their "
                "simulator state (robot-rl collect)"
            )
        if states.shape[1] != size:
            raise LabelError(
                f"segment {seg.name}: sim_state has {states.shape[1]} values, {task_name}'s "
                f"world has {size}: the episodes come from another world"
            )
        out = np.zeros(len(states), bool)
        start = 0
        for end in seg.episode_ends.tolist():
            set_state(states[start])
            env.goal = env.objective.sample_goal(env, probe_rng[0])
            for t in range(start, end):
                set_state(states[t])
                out[t] = task.is_success(env)
            start = end
        return out

    return detect
