"""Looking at robot data: lake episodes, sampled batches and evaluation rollouts logged to Rerun
(``robot-rl lake view``, ``robot-rl eval rrd=...``; docs/viewing.md)."""

from robot_rl.viz.rerun_log import (
    episode_path,
    log_batch,
    log_episode,
    log_eval_rollouts,
    log_trajectory,
    new_recording,
)

__all__ = ["episode_path", "log_batch", "log_episode", "log_eval_rollouts", "log_trajectory", "new_recording"]
