"""The goal-relabeling sampler: typed Batches from a pinned lake snapshot, at memory speed.

Pipeline: ``LakeView.load`` materializes the snapshot's fields in RAM once (threads, progress
bar) -> ``EpisodePool`` indexes it -> ``sample_rows`` draws rows and relabels goals with
vectorized numpy -> ``gather`` builds a host Batch -> a background thread keeps ``prefetch``
batches ready in pinned memory -> ``Sampler.__next__`` moves one to the device, converts images
to float there and applies DrQ random shifts there.

Transitions and episode ends (the rule). Step ``t`` of an episode is a transition
``(o_t, a_t, r_t, o_{t+1})`` for every ``t`` with ``is_last[t] = False``, so ``next_observations``
never crosses an episode boundary and the last step's action and reward are never used. The
task terminal of that transition is ``is_terminal[t+1]``: true only when ``t+1`` is the last step
and the episode ended in a terminal state; an episode that was cut off (``is_last`` without
``is_terminal``) bootstraps from its last observation.

Relabeling (``docs/algorithms.md``, "Hindsight goal relabeling"); each row draws a source
with the configured probabilities (they must sum to 1), then a transition eligible for it:

    future     j - t ~ Geometric(p) truncated at the last step T (or uniform on (t, T])
    final      j = T
               goal = o_j (goal cameras; goal state = achieved_goal_j, else state_j)
               r = d = 1 if t + 1 == j (index rule) or |ag_{t+1} - ag_j| < eps (distance rule)
               mc_return = gamma^(j - t - 1)
    current    j = t: the goal is the row's own observation, already reached: r = d = mc_return = 1
               (OGBench's ``p_curgoal``)
    negative   goal = a uniformly drawn step of a *different* episode; r = d = mc_return = 0
    commanded  the episode's stored goal (only episodes that have one), task reward r_t,
               d = is_terminal[t+1], mc_return = discounted return-to-go within the episode
    task       as commanded but with a blank (zero) goal: plain task-reward learning
               (``success_terminal``: for both, a reward > 0 also ends the episode, d = 1, and
               mc_return = gamma^(m - t) to the first rewarded transition m, as when an episode
               stops at success)

Actor goals (``actor_goals``): ``same`` (default) gives the actor the rows' goals above;
``future_uniform`` draws a second goal per row for the actor, uniformly from the rest of its own
episode, ``j ~ U{t+1..T}`` (OGBench's actor goals: the value function learns from current, future
and random goals, the policy only from goals its own trajectory reached); ``Batch.actor_goals``.

MT-Opt task relabeling: with probability ``p_task`` a row is given another task ``k`` (one with
stored success labels of source ``label_source``: ``sim``, ``user``, a detector id) and
``r = d = label_k[t+1]``, ``mc_return`` the labels' return-to-go (unknown labels count as 0). A
row keeps its own task when the confidence of ``label_k[t+1]`` is below ``min_label_confidence``.

Streaming mode (``streaming_segments = K > 0``) for lakes larger than RAM: a rotating buffer of
K whole segments, visited in a seeded random order that covers every segment once per pass; every
``swap_every`` batches the oldest segment leaves and the next (prefetched in the background)
enters. Rows are uniform over the transitions *in the buffer*, not over the lake: a segment is
sampled only while buffered, about ``K * swap_every`` batches per pass, and negatives come from
buffered episodes only.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from data_lake.batch import COMMANDED, CURRENT, FINAL, FUTURE, GOAL_SOURCES, NEGATIVE, TASK, Batch, Observation
from data_lake.lake import LakeView
from data_lake.segment import SIM_SOURCE, SegmentData, concat_segments, label_key, split_label_key


class SamplerError(ValueError):
    pass


ACTOR_GOALS = ("same", "future_uniform")


@dataclasses.dataclass(frozen=True)
class RelabelConfig:
    """Probabilities of each goal source (must sum to 1) and the reward rule."""

    future: float = 0.6
    final: float = 0.1
    negative: float = 0.2
    commanded: float = 0.0
    task: float = 0.1
    current: float = 0.0  # goal = the row's own observation (OGBench's p_curgoal)
    future_mode: str = "geometric"  # "geometric" | "uniform"
    geometric_p: float = 0.1
    reward_rule: str = "index"  # "index" | "distance"
    epsilon: float = 0.05
    gamma: float = 0.99
    p_task: float = 0.0  # MT-Opt task relabeling
    label_source: str = SIM_SOURCE  # whose success labels p_task uses: "sim", "user", a detector id
    min_label_confidence: float = 0.0  # never relabel onto a label less confident than this
    success_terminal: bool = False  # commanded/task rows: a reward > 0 ends the episode (success is absorbing)
    actor_goals: str = "same"  # "same": the rows' goals | "future_uniform": the actor's own, U{t+1..T}

    def __post_init__(self) -> None:
        probs = self.probabilities
        if any(p < 0 for p in probs.values()) or abs(sum(probs.values()) - 1.0) > 1e-6:
            raise SamplerError(
                f"relabel probabilities must be >= 0 and sum to 1, got {probs} (sum {sum(probs.values()):.4f})"
            )
        if self.future_mode not in ("geometric", "uniform"):
            raise SamplerError(f"future_mode must be 'geometric' or 'uniform', got {self.future_mode!r}")
        if not 0 < self.geometric_p <= 1:
            raise SamplerError(f"geometric_p must be in (0, 1], got {self.geometric_p}")
        if self.reward_rule not in ("index", "distance"):
            raise SamplerError(f"reward_rule must be 'index' or 'distance', got {self.reward_rule!r}")
        if not 0 < self.gamma <= 1:
            raise SamplerError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0 <= self.p_task <= 1:
            raise SamplerError(f"p_task must be in [0, 1], got {self.p_task}")
        if not 0 <= self.min_label_confidence <= 1:
            raise SamplerError(f"min_label_confidence must be in [0, 1], got {self.min_label_confidence}")
        try:
            label_key("task", self.label_source)
        except ValueError as e:
            raise SamplerError(str(e)) from e
        if self.actor_goals not in ACTOR_GOALS:
            raise SamplerError(f"actor_goals must be one of {ACTOR_GOALS}, got {self.actor_goals!r}")

    @property
    def probabilities(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in GOAL_SOURCES}

    @property
    def uses_goals(self) -> bool:
        return self.future + self.final + self.negative + self.commanded + self.current > 0


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    batch_size: int = 256
    cameras: tuple[str, ...] | None = None  # None: every camera in the lake
    goal_cameras: tuple[str, ...] | None = None  # None: the same as cameras
    use_state: bool = True
    scene_state: bool = False  # append the scene vector (achieved_goal) to the observation state
    relabel: RelabelConfig = dataclasses.field(default_factory=RelabelConfig)
    task_balanced: bool = False  # equal share per task, then successes vs failures within a task
    augment_pad: int = 4  # DrQ random shift; 0 disables
    augment_cameras: dict[str, int] | None = None  # per-camera pad overrides
    prefetch: int = 4
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    streaming_segments: int = 0  # 0: load everything into RAM
    swap_every: int = 50
    load_threads: int = 4
    episode_ids: tuple[str, ...] | None = None  # sample only these episodes (None: every episode)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SamplerError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise SamplerError(f"rank must be in [0, world_size), got rank {self.rank} of {self.world_size}")
        if self.augment_pad < 0 or self.prefetch < 1 or self.swap_every < 1:
            raise SamplerError("augment_pad must be >= 0, prefetch and swap_every >= 1")


# ---------------------------------------------------------------------------- the pool in RAM
@dataclasses.dataclass
class EpisodePool:
    """Concatenated step arrays of the sampled episodes plus the indices relabeling needs."""

    images: dict[str, np.ndarray]  # cam -> uint8 (N, H, W, 3)
    state: np.ndarray | None  # (N, S)
    achieved: np.ndarray | None  # (N, G)
    action: np.ndarray  # (N, A)
    reward: np.ndarray  # (N,)
    is_terminal: np.ndarray  # (N,) bool
    ep_start: np.ndarray  # (E,) first step of each episode
    ep_end: np.ndarray  # (E,) one past its last step
    ep_of: np.ndarray  # (N,) episode of each step
    valid: np.ndarray  # transition steps t (is_last[t] False)
    goal_images: dict[str, np.ndarray]  # cam -> (E, H, W, 3)
    goal_state: np.ndarray | None  # (E, G)
    has_goal: np.ndarray  # (E,) bool: a commanded goal is stored
    task_of: np.ndarray  # (E,) int task id
    success: np.ndarray  # (E,) int8: 1, 0, -1 unknown
    mc_task: np.ndarray  # (N,) discounted task return-to-go
    mc_success: np.ndarray  # (N,) gamma^(m - t) to the first rewarded transition m >= t (success_terminal)
    labels: dict[int, np.ndarray]  # task id -> (N,) float32 stored success labels at t + 1
    label_mc: dict[int, np.ndarray]  # task id -> (N,) their return-to-go
    label_conf: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)  # task id -> (N,) at t + 1
    label_sources: tuple[str, ...] = ()  # every label source stored in the pooled data

    @property
    def n_episodes(self) -> int:
        return len(self.ep_start)


def _return_to_go(reward: np.ndarray, ep_start: np.ndarray, ep_end: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = sum_{i=t}^{T-1} gamma^(i-t) r_i within each episode (the last step's reward unused)."""
    out = np.zeros(len(reward), np.float32)
    for s, e in zip(ep_start.tolist(), ep_end.tolist(), strict=True):
        acc = 0.0
        for i in range(e - 2, s - 1, -1):
            acc = float(reward[i]) + gamma * acc
            out[i] = acc
    return out


def _first_success_return(r: np.ndarray, ep_start: np.ndarray, ep_end: np.ndarray, gamma: float) -> np.ndarray:
    """gamma^(m - t) for the first transition m >= t whose reward is 1 (success ends the episode), else 0."""
    out = np.zeros(len(r), np.float32)
    for s, e in zip(ep_start.tolist(), ep_end.tolist(), strict=True):
        acc = 0.0
        for i in range(e - 2, s - 1, -1):
            acc = 1.0 if r[i] > 0 else gamma * acc
            out[i] = acc
    return out


def build_pool(
    data: SegmentData,
    cfg: SamplerConfig,
    tasks: Sequence[str],
    cameras: Sequence[str],
    goal_cameras: Sequence[str],
    labels: dict[str, np.ndarray] | None = None,
    label_confidence: dict[str, np.ndarray] | None = None,
) -> EpisodePool:
    """Index a loaded snapshot (or a rank's share of it) for sampling. ``labels`` and
    ``label_confidence`` are keyed by task name (one source's sets: :func:`label_sets_of`)."""
    ends = data.episode_ends.astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    n = int(ends[-1]) if len(ends) else 0
    ep_of = np.repeat(np.arange(len(ends)), ends - starts)
    is_last = data.steps["is_last"].astype(bool)
    task_index = {t: i for i, t in enumerate(tasks)}
    success = np.array([-1 if s is None else int(s) for s in data.table["success"]], np.int8)
    gs = data.goals.get("state")
    has_goal = np.zeros(len(ends), bool)
    if data.has_goal:
        flags = [
            np.asarray(data.has_goal[k], bool)
            for k in (*[f"images/{c}" for c in goal_cameras], "state")
            if k in data.has_goal
        ]
        if flags:
            has_goal = np.logical_and.reduce(flags)
    gamma = cfg.relabel.gamma
    reward = data.steps["reward"].astype(np.float32)
    # task k's reward for transition t is its success label at t + 1 (terminal on success)
    lab: dict[int, np.ndarray] = {}
    conf: dict[int, np.ndarray] = {}
    for name, v in (labels or {}).items():
        if name not in task_index:
            if cfg.relabel.p_task > 0:
                raise SamplerError(
                    f"stored labels of task {name!r}, which no sampled episode has (tasks {list(tasks)})"
                )
            continue
        r = np.zeros(n, np.float32)
        r[:-1] = v[1:n]
        lab[task_index[name]] = r
        c = np.zeros(n, np.float32)
        c[:-1] = (label_confidence or {}).get(name, np.ones(n, np.float32))[1:n]
        conf[task_index[name]] = c
    state_parts = [data.steps["state"]] if cfg.use_state and "state" in data.steps else []
    if cfg.scene_state:
        state_parts.append(data.steps["achieved_goal"].astype(np.float32))
    return EpisodePool(
        images={c: data.steps[f"images/{c}"] for c in cameras},
        state=np.concatenate(state_parts, axis=1) if state_parts else None,
        achieved=data.steps.get("achieved_goal"),
        action=data.steps["action"],
        reward=reward,
        is_terminal=data.steps["is_terminal"].astype(bool),
        ep_start=starts,
        ep_end=ends,
        ep_of=ep_of,
        valid=np.flatnonzero(~is_last[:n]),
        goal_images={c: data.goals[f"images/{c}"] for c in goal_cameras if f"images/{c}" in data.goals},
        goal_state=gs,
        has_goal=has_goal,
        task_of=np.array([task_index[t] for t in data.table["task"]], np.int64),
        success=success,
        mc_task=_return_to_go(reward, starts, ends, gamma),
        mc_success=_first_success_return(reward, starts, ends, gamma),
        labels=lab,
        label_mc={k: _first_success_return(v, starts, ends, gamma) for k, v in lab.items()},
        label_conf=conf,
        label_sources=tuple(sorted({split_label_key(k)[1] for k in data.labels})),
    )


def label_sets_of(data: SegmentData, source: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The label sets of ``source`` in ``data``, keyed by task name: (labels, confidence)."""
    labels: dict[str, np.ndarray] = {}
    confidence: dict[str, np.ndarray] = {}
    for key, v in data.labels.items():
        task, src = split_label_key(key)
        if src == source:
            labels[task] = v
            if key in data.label_confidence:
                confidence[task] = data.label_confidence[key]
    return labels, confidence


def label_provenance(view: LakeView, rc: RelabelConfig) -> dict[str, Any] | None:
    """Which success labels MT-Opt relabeling of ``rc`` reads from ``view`` (for run metadata)."""
    if rc.p_task == 0:
        return None
    sets = [
        {"task": d["task"], "provenance": d["provenance"], "segments": len(d["segments"]), "of": d["of_segments"]}
        for d in view.label_sets()
        if d["source"] == rc.label_source
    ]
    return {"source": rc.label_source, "min_label_confidence": rc.min_label_confidence, "sets": sets}


# ---------------------------------------------------------------------------- relabeling
@dataclasses.dataclass(frozen=True)
class Rows:
    """The index plan of one batch (all numpy, shape (B,))."""

    t: np.ndarray  # transition step
    goal_step: np.ndarray  # step whose observation is the goal, -1 for commanded / task rows
    source: np.ndarray  # goal source code
    reward: np.ndarray
    terminal: np.ndarray
    mc_return: np.ndarray
    task_id: np.ndarray
    actor_goal_step: np.ndarray | None = None  # the actor's own goal step (``actor_goals != "same"``)


def _draw_steps(
    pool: EpisodePool, eligible: np.ndarray, n: int, rng: np.random.Generator, cfg: SamplerConfig
) -> np.ndarray:
    if n == 0:
        return np.zeros(0, np.int64)
    if not cfg.task_balanced:
        return eligible[rng.integers(0, len(eligible), n)]
    # equal share per task, then successes vs failures within the task (when known)
    ep = pool.ep_of[eligible]
    group = pool.task_of[ep] * 3 + (pool.success[ep] + 1)  # (task, outcome) groups
    keys, inverse, counts = np.unique(group, return_inverse=True, return_counts=True)
    task_of_key = keys // 3
    n_tasks = len(np.unique(task_of_key))
    per_key_tasks = np.array([np.sum(task_of_key == tk) for tk in task_of_key])
    w_key = 1.0 / (n_tasks * per_key_tasks)  # each task 1/n_tasks, split over its outcomes
    w = w_key[inverse] / counts[inverse]
    return eligible[rng.choice(len(eligible), n, p=w / w.sum())]


def sample_rows(pool: EpisodePool, cfg: SamplerConfig, rng: np.random.Generator, batch_size: int) -> Rows:
    """Draw a batch plan: sources, transitions, relabeled goals, rewards, terminals, returns."""
    rc = cfg.relabel
    names = list(GOAL_SOURCES)
    probs = np.array([rc.probabilities[k] for k in names])
    source = rng.choice(len(names), batch_size, p=probs).astype(np.int64)
    t = np.empty(batch_size, np.int64)
    commanded_ok = pool.valid[pool.has_goal[pool.ep_of[pool.valid]]]
    for code in range(len(names)):
        rows = np.flatnonzero(source == code)
        eligible = commanded_ok if code == COMMANDED else pool.valid
        if len(rows) and len(eligible) == 0:
            raise SamplerError("commanded goals requested but no sampled episode stores a commanded goal")
        t[rows] = _draw_steps(pool, eligible, len(rows), rng, cfg)
    ep = pool.ep_of[t]
    last = pool.ep_end[ep] - 1
    goal_step = np.full(batch_size, -1, np.int64)
    reward = np.zeros(batch_size, np.float32)
    terminal = np.zeros(batch_size, np.float32)
    mc = np.zeros(batch_size, np.float32)

    # future / final: a later step of the same episode
    fut = source == FUTURE
    if rc.future_mode == "geometric":
        k = rng.geometric(rc.geometric_p, batch_size)
    else:
        k = 1 + np.floor(rng.random(batch_size) * (last - t)).astype(np.int64)
    j = np.minimum(t + k, last)
    j = np.where(source == FINAL, last, j)
    pos = fut | (source == FINAL)
    goal_step[pos] = j[pos]
    if rc.reward_rule == "index":
        reached = t + 1 == j
    else:
        if pool.achieved is None:
            raise SamplerError("reward_rule='distance' needs achieved_goal in the lake; use reward_rule='index'")
        reached = np.linalg.norm(pool.achieved[t + 1] - pool.achieved[j], axis=-1) < rc.epsilon
    reward[pos] = reached[pos]
    terminal[pos] = reached[pos]
    mc[pos] = rc.gamma ** (j[pos] - t[pos] - 1)

    # current: the goal is this very observation, reached before acting
    cur = source == CURRENT
    goal_step[cur] = t[cur]
    reward[cur] = terminal[cur] = mc[cur] = 1.0

    # negative: a step of another episode
    neg = np.flatnonzero(source == NEGATIVE)
    if len(neg):
        if pool.n_episodes < 2:
            raise SamplerError("negative goals need at least 2 episodes in the sampled data")
        other = rng.integers(0, pool.n_episodes - 1, len(neg))
        other += other >= ep[neg]  # skip the row's own episode
        length = pool.ep_end[other] - pool.ep_start[other]
        goal_step[neg] = pool.ep_start[other] + np.floor(rng.random(len(neg)) * length).astype(np.int64)

    # commanded / task: the episode's own reward
    own = (source == COMMANDED) | (source == TASK)
    reward[own] = pool.reward[t[own]]
    terminal[own] = pool.is_terminal[t[own] + 1]
    mc[own] = pool.mc_task[t[own]]
    if rc.success_terminal:
        terminal[own] = np.maximum(terminal[own], reward[own] > 0)
        mc[own] = pool.mc_success[t[own]]
    task_id = pool.task_of[ep].copy()

    # MT-Opt task relabeling from stored success labels
    if rc.p_task > 0:
        if not pool.labels:
            raise SamplerError(
                f"p_task > 0 needs stored success labels of source {rc.label_source!r}; the sampled data has "
                f"label sources {list(pool.label_sources) or 'none'}: run `robot-rl lake label --task NAME` (sim) or "
                "`robot-rl lake annotate` first, or set relabel.label_source to one of them (sim labels count "
                "only where every sampled segment has them: label new segments too)"
            )
        labelled = np.array(sorted(pool.labels))
        swap = np.flatnonzero(rng.random(batch_size) < rc.p_task)
        new = labelled[rng.integers(0, len(labelled), len(swap))]
        for k_id in np.unique(new):
            rows = swap[new == k_id]
            rows = rows[pool.label_conf[int(k_id)][t[rows]] >= rc.min_label_confidence]  # else: own task
            task_id[rows] = k_id
            reward[rows] = pool.labels[int(k_id)][t[rows]]
            terminal[rows] = reward[rows]
            mc[rows] = pool.label_mc[int(k_id)][t[rows]]
            goal_step[rows] = -1
            source[rows] = TASK
    actor_goal_step = None
    if rc.actor_goals == "future_uniform":
        actor_goal_step = t + 1 + np.floor(rng.random(batch_size) * (last - t)).astype(np.int64)  # U{t+1..T}
    return Rows(t, goal_step, source, reward, terminal, mc, task_id, actor_goal_step)


def gather(pool: EpisodePool, rows: Rows, goals: bool) -> Batch:
    """Build a host Batch (uint8 images) from a batch plan with numpy fancy indexing."""
    t, nt = rows.t, rows.t + 1
    ep = pool.ep_of[t]

    def obs(idx: np.ndarray) -> Observation:
        return Observation(
            {c: torch.from_numpy(a[idx]) for c, a in pool.images.items()},
            None if pool.state is None else torch.from_numpy(pool.state[idx]),
        )

    goal_obs = None
    gstate_src = pool.achieved if pool.achieved is not None else pool.state  # goal states: achieved_goal, else state
    if goals:
        g = rows.goal_step
        has_step = g >= 0
        gi = np.where(has_step, g, 0)
        cmd = rows.source == COMMANDED
        images = {}
        for c in pool.goal_images or pool.images:
            src = pool.images[c] if c in pool.images else None
            img = src[gi] if src is not None else np.zeros((len(t), *pool.goal_images[c].shape[1:]), np.uint8)
            img[~has_step] = 0
            if c in pool.goal_images and cmd.any():
                img[cmd] = pool.goal_images[c][ep[cmd]]
            images[c] = torch.from_numpy(img)
        gstate = None
        if gstate_src is not None:
            gs = gstate_src[gi].astype(np.float32)
            gs[~has_step] = 0
            if pool.goal_state is not None and cmd.any():
                gs[cmd] = pool.goal_state[ep[cmd]]
            gstate = torch.from_numpy(gs)
        goal_obs = Observation(images, gstate)
    actor_goals = None
    if goals and rows.actor_goal_step is not None:
        a = rows.actor_goal_step
        missing = [c for c in (goal_obs.images if goal_obs else {}) if c not in pool.images]
        if missing:
            raise SamplerError(f"actor_goals='future_uniform' needs goal cameras {missing} among the observations")
        actor_goals = Observation(
            {c: torch.from_numpy(pool.images[c][a]) for c in (goal_obs.images if goal_obs else {})},
            None if gstate_src is None else torch.from_numpy(gstate_src[a].astype(np.float32)),
        )
    # a' of the data at s'; the episode's last step stores no action, so there it repeats a_t
    last = (nt == pool.ep_end[ep] - 1)[:, None]  # (B, 1)
    next_actions = np.where(last, pool.action[t], pool.action[nt])  # (B, A)
    return Batch(
        observations=obs(t),
        actions=torch.from_numpy(pool.action[t]),
        rewards=torch.from_numpy(rows.reward),
        terminals=torch.from_numpy(rows.terminal),
        next_observations=obs(nt),
        goals=goal_obs,
        task_ids=torch.from_numpy(rows.task_id),
        mc_returns=torch.from_numpy(rows.mc_return),
        goal_source=torch.from_numpy(rows.source),
        actor_goals=actor_goals,
        next_actions=torch.from_numpy(next_actions),
    )


# ---------------------------------------------------------------------------- augmentation (device)
def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ random shift: pad by ``pad`` (replicating the border) and crop back at a random offset.

    x: (B, H, W, C) images of any dtype on any device (applied to uint8 before the float
    conversion: four times less memory traffic); deterministic given ``generator``. Replicate
    padding is implemented as clamped source indices, one flat gather, no padded copy.
    """
    if pad == 0:
        return x
    B, H, W, C = x.shape
    off = torch.randint(0, 2 * pad + 1, (2, B), generator=generator, device=generator.device).to(x.device) - pad
    rows = (off[0, :, None] + torch.arange(H, device=x.device)).clamp_(0, H - 1)  # (B, H)
    cols = (off[1, :, None] + torch.arange(W, device=x.device)).clamp_(0, W - 1)  # (B, W)
    base = torch.arange(B, device=x.device)[:, None, None] * (H * W)
    flat = (base + rows[:, :, None] * W + cols[:, None, :]).reshape(-1)  # (B*H*W,)
    return x.reshape(B * H * W, C).index_select(0, flat).reshape(B, H, W, C)


def _episode_in_share(episode_id: str, rank: int, world_size: int) -> bool:
    """Rank ``r`` of ``W`` owns the episodes whose id hashes to r: disjoint, covering, stable."""
    return int(episode_id[:12], 16) % world_size == rank


def _subset(data: SegmentData, keep: np.ndarray) -> SegmentData:
    """The episodes of ``data`` where ``keep`` (E,) is true, re-concatenated."""
    if keep.all():
        return data
    ends = data.episode_ends
    starts = np.concatenate([[0], ends[:-1]])
    pieces = [np.arange(s, e) for s, e, k in zip(starts, ends, keep, strict=True) if k]
    steps_idx = np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, np.int64)
    lengths = (ends - starts)[keep]
    return SegmentData(
        name=data.name,
        steps={k: v[steps_idx] for k, v in data.steps.items()},
        goals={k: v[keep] for k, v in data.goals.items()},
        episode_ends=np.cumsum(lengths),
        table={c: [v for v, k in zip(col, keep, strict=True) if k] for c, col in data.table.items()},
        has_goal={g: [v for v, k in zip(col, keep, strict=True) if k] for g, col in data.has_goal.items()},
        labels={t: v[steps_idx] for t, v in data.labels.items()},
        label_confidence={t: v[steps_idx] for t, v in data.label_confidence.items()},
        label_attrs=data.label_attrs,
    )


# ---------------------------------------------------------------------------- the sampler
class Sampler:
    """Batches from a pinned snapshot: ``next(sampler)`` is a device Batch, augmented on the device.

    ``sample_host()`` draws one host batch synchronously (no thread); iterating starts a background
    thread that keeps ``cfg.prefetch`` batches ready (pinned when the device is CUDA). Use one or the
    other on a sampler, so the sequence of batches stays a pure function of (snapshot, seed).
    """

    def __init__(self, view: LakeView, cfg: SamplerConfig, device: str | torch.device = "cpu", progress: bool = True):
        self.view, self.cfg, self.device = view, cfg, torch.device(device)
        records = view.episodes()
        if not records:
            raise SamplerError(f"snapshot {view.snapshot_id} ({view.ref}) holds no episodes")
        if cfg.episode_ids is not None:
            missing = set(cfg.episode_ids) - {r.episode_id for r in records}
            if missing:
                raise SamplerError(
                    f"{len(missing)} selected episode ids are not in snapshot {view.snapshot_id}, "
                    f"e.g. {sorted(missing)[0]}"
                )
        schema = view.schema or {"step": {}, "goal": {}}
        lake_cams = sorted(k.split("/", 1)[1] for k in schema["step"] if k.startswith("images/"))
        self.cameras = tuple(cfg.cameras) if cfg.cameras is not None else tuple(lake_cams)
        self.goal_cameras = tuple(cfg.goal_cameras) if cfg.goal_cameras is not None else self.cameras
        for cam in (*self.cameras, *self.goal_cameras):
            if cam not in lake_cams:
                raise SamplerError(f"camera {cam!r} is not in the lake; it has {lake_cams}")
        if cfg.use_state and "state" not in schema["step"]:
            raise SamplerError(f"the lake has no 'state' field; it has {sorted(schema['step'])}; set use_state=False")
        if cfg.scene_state and "achieved_goal" not in schema["step"]:
            raise SamplerError(
                f"scene_state=True observes the lake's 'achieved_goal' (the scene vector), which this lake lacks; "
                f"it has {sorted(schema['step'])}; set scene_state=False"
            )
        self.tasks = tuple(sorted({r.task for r in records}))
        self.fields = [f"images/{c}" for c in sorted({*self.cameras, *self.goal_cameras})]
        self.fields += ["action", "reward", "is_first", "is_last", "is_terminal"]
        self.fields += [k for k in ("state", "achieved_goal") if k in schema["step"]]
        self.scene_state_dim = int(schema["step"]["achieved_goal"]["shape"][0]) if cfg.scene_state else 0
        self._rng = np.random.default_rng([cfg.seed, cfg.rank])
        self._torch_gen = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003 + cfg.rank)
        self._queue: queue.Queue[Any] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.batches_produced = 0
        self.batches_consumed = 0
        self._rng_after: dict[str, Any] = dict(self._rng.bit_generator.state)
        if cfg.streaming_segments:
            self._order = self._rng.permutation(len(view.segment_names()))
            self._next_seg = 0
            self._io = cf.ThreadPoolExecutor(1, thread_name_prefix="stream")
            k = min(cfg.streaming_segments, len(self._order))
            self._buffer = [self._read_next() for _ in range(k)]
            self._pending = self._io.submit(self._read_next) if len(self._order) > k else None
            self._since_swap = 0
            self.pool = self._pool_from(self._buffer)
        else:
            data = view.load(self.fields, progress=progress, threads=cfg.load_threads)
            self.pool = self._pool_from([data])
        if len(self.pool.valid) == 0:  # rows are drawn with replacement: any number of transitions > 0 will do
            raise SamplerError(
                f"the sampled episodes hold no transitions (rank {cfg.rank} of {cfg.world_size}, "
                f"snapshot {view.snapshot_id})"
            )

    # ------------------------------------------------------------ data
    def _pool_from(self, datas: list[SegmentData]) -> EpisodePool:
        cfg = self.cfg
        allowed = None if cfg.episode_ids is None else set(cfg.episode_ids)

        def keep(e: str) -> bool:
            return _episode_in_share(e, cfg.rank, cfg.world_size) and (allowed is None or e in allowed)

        shares = [_subset(d, np.array([keep(e) for e in d.table["episode_id"]], bool)) for d in datas]
        shares = [s for s in shares if len(s.episode_ends)]
        if not shares:
            which = "" if allowed is None else f" among the {len(allowed)} selected episode ids"
            raise SamplerError(
                f"rank {cfg.rank} of {cfg.world_size} owns no episodes{which} of snapshot {self.view.snapshot_id}"
            )
        data = concat_segments(shares, self.view.snapshot_id)
        labels, confidence = label_sets_of(data, cfg.relabel.label_source)
        return build_pool(data, cfg, self.tasks, self.cameras, self.goal_cameras, labels, confidence)

    def _read_next(self) -> SegmentData:
        names = self.view.segment_names()
        name = names[self._order[self._next_seg % len(self._order)]]
        self._next_seg += 1
        return self.view.read_segment(name, self.fields)

    def _maybe_swap(self) -> None:
        if not self.cfg.streaming_segments or self._pending is None:
            return
        self._since_swap += 1
        if self._since_swap < self.cfg.swap_every:
            return
        self._since_swap = 0
        new = self._pending.result()
        self._buffer = [*self._buffer[1:], new]
        self._pending = self._io.submit(self._read_next)
        self.pool = self._pool_from(self._buffer)

    def statistics(self, min_std: float = 1e-3) -> dict[str, tuple[float, ...]]:
        """Per-dimension mean and std (floored at ``min_std``) of the observation state and of the goal
        state over every step in memory, for input normalization (``ObservationSpec.with_statistics``).

        The goal state's layout is that of relabeled goals (``achieved_goal``, else ``state``), which is
        also the layout of stored commanded goals. Keys: ``state_mean``, ``state_std``,
        ``goal_state_mean``, ``goal_state_std`` (empty tuples for a part the data does not have).
        """

        def moments(x: np.ndarray | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
            if x is None or len(x) == 0:
                return (), ()
            x = x.astype(np.float64)
            return tuple(x.mean(0).tolist()), tuple(np.maximum(x.std(0), min_std).tolist())

        pool = self.pool
        state = moments(pool.state)
        goal = moments(pool.achieved if pool.achieved is not None else pool.state)
        return {"state_mean": state[0], "state_std": state[1], "goal_state_mean": goal[0], "goal_state_std": goal[1]}

    # ------------------------------------------------------------ sampling
    def example_batch(self, batch_size: int = 2) -> Batch:
        """A small host batch from a separate RNG (shapes for building networks); the sampler's
        own sequence of batches is untouched."""
        rows = sample_rows(self.pool, self.cfg, np.random.default_rng(0), batch_size)
        return gather(self.pool, rows, goals=self.cfg.relabel.uses_goals)

    def sample_host(self) -> Batch:
        """One host batch (uint8 images on the CPU), drawn synchronously."""
        rows = sample_rows(self.pool, self.cfg, self._rng, self.cfg.batch_size)
        batch = gather(self.pool, rows, goals=self.cfg.relabel.uses_goals)
        self.batches_produced += 1
        self._maybe_swap()
        return batch

    def _produce(self) -> None:
        assert self._queue is not None
        pin = self.device.type == "cuda"
        try:
            while not self._stop.is_set():
                batch = self.sample_host()
                if pin:
                    batch = batch.pin_memory()
                item = (batch, self._rng.bit_generator.state)  # the RNG state after this batch (for resume)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surfaced in __next__
            self._queue.put(e)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._thread is None:
            self._queue = queue.Queue(self.cfg.prefetch)
            self._thread = threading.Thread(target=self._produce, name="sampler", daemon=True)
            self._thread.start()
        assert self._queue is not None
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._rng_after = item
        self.batches_consumed += 1
        return self.augment(batch.to(self.device, float_images=False)).to(self.device)

    # ------------------------------------------------------------ exact resume
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state after the batches consumed so far (not those prefetched ahead).

        ``load_state_dict`` on a sampler built from the same snapshot and config makes the next
        batches bitwise-equal to those this sampler would have produced.
        """
        if self.cfg.streaming_segments:
            raise SamplerError("exact resume of a streaming sampler (streaming_segments > 0) is not supported")
        rng = self._rng_after if self._thread is not None else self._rng.bit_generator.state
        return {
            "batches": self.batches_consumed if self._thread is not None else self.batches_produced,
            "numpy_rng": rng,
            "torch_rng": self._torch_gen.get_state().tolist(),
            "snapshot_id": self.view.snapshot_id,
            "rank": self.cfg.rank,
            "world_size": self.cfg.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``; call before drawing the first batch."""
        if self._thread is not None or self.batches_produced:
            raise SamplerError("load_state_dict must be called before the sampler draws any batch")
        if self.cfg.streaming_segments:
            raise SamplerError("exact resume of a streaming sampler (streaming_segments > 0) is not supported")
        mine = (self.view.snapshot_id, self.cfg.rank, self.cfg.world_size)
        theirs = (state["snapshot_id"], state["rank"], state["world_size"])
        if mine != theirs:
            raise SamplerError(f"sampler state is for (snapshot, rank, world_size) {theirs}, this sampler is {mine}")
        self._rng.bit_generator.state = state["numpy_rng"]
        self._rng_after = state["numpy_rng"]
        self._torch_gen.set_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        self.batches_produced = self.batches_consumed = int(state["batches"])

    def shifter(self) -> Callable[[str, torch.Tensor], torch.Tensor] | None:
        """``(camera, uint8 images) -> shifted images``: the DrQ shift with each camera's pad (``augment_cameras``
        overrides ``augment_pad``), drawn from the sampler's torch generator; None when every pad is 0."""
        pads = {c: (self.cfg.augment_cameras or {}).get(c, self.cfg.augment_pad) for c in self.cameras}
        if not any(pads.values()):
            return None

        def shift(cam: str, x: torch.Tensor) -> torch.Tensor:
            return random_shift(x, pads.get(cam, self.cfg.augment_pad), self._torch_gen)

        return shift

    def augment(self, batch: Batch) -> Batch:
        """DrQ random shift per camera (``augment_cameras`` overrides the pad), on the device.

        Works on a batch whose images are still uint8 (B, H, W, 3); observations, next
        observations and goals get independent shifts.
        """
        shift = self.shifter()
        if shift is None:
            return batch
        return dataclasses.replace(
            batch,
            observations=batch.observations.map_images(shift),
            next_observations=batch.next_observations.map_images(shift),
            goals=None if batch.goals is None else batch.goals.map_images(shift),
            actor_goals=None if batch.actor_goals is None else batch.actor_goals.map_images(shift),
        )

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.cfg.streaming_segments:
            self._io.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
