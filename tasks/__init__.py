"""robot-rl task registry: named tasks over the ``sim`` worlds.

>>> import numpy as np
>>> import tasks
>>> task = tasks.get("tabletop/push_red_to_pad")
>>> env = task.make_env(image_size=64, cameras=("front", "wrist"), seed=0)
>>> obs, info = env.reset()
>>> policy = task.scripted_policy(noise=0.0, rng=np.random.default_rng(0))
>>> obs, reward, terminated, truncated, info = env.step(policy.act(env))
>>> goal_images = task.goal_images(env)   # {camera: uint8 (H, W, 3)}

``tasks.names()`` lists every task; an unknown name raises a KeyError listing them. Scripted
policies read the simulator, so ``policy.act`` takes the env (not an observation);
``ScriptedPolicy([...])`` puts one per env behind the rollout loop (``sim.rollout``).
Collection into the lake: :mod:`tasks.collect` (``robot-rl collect``).
Worlds: ``tabletop/*`` (:mod:`tasks.tabletop`, plus ``tabletop/play`` from :mod:`tasks.play`),
``fetch/*`` (:mod:`tasks.fetch`), ``pointmaze/umaze`` (:mod:`tasks.pointmaze`) and OGBench's evaluation
tasks ``ogbench/<env>-task<k>`` (:mod:`tasks.ogbench`; ``tasks.ogbench.ogbench_tasks("cube-single")``
lists an env's five).
"""

from tasks import fetch, ogbench, play, pointmaze, tabletop  # noqa: F401  (importing registers the tasks)
from tasks.core import NOISE_LEVELS, REGISTRY, Policy, ScriptedPolicy, Task, get, make_policy, names

__all__ = ["NOISE_LEVELS", "REGISTRY", "Policy", "ScriptedPolicy", "Task", "get", "make_policy", "names"]
