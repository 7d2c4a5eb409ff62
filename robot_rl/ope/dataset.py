"""Lake episodes -> the estimators' :class:`~robot_rl.ope.data.Trajectories`.

Two steps, so the observations stay available to whoever needs them (FQE, DICE):

    load_logged(lake, ref, task=..., episodes=..., max_episodes=...) -> LoggedData
        whole episodes of a pinned snapshot, in lake order: their M = Σ_i T_i logged transitions
        (observations, actions, rewards, stored simulator states, logged log μ) and commanded goals
    trajectories_from(data, target, gamma, behavior=..., fqe=...) -> Trajectories
        log π(a_t | s_t) of every logged action (``target.score_logged``, batched on the device),
        log μ(a_t | h_t) (the lake's ``action_logp``, or a fitted behavior model), and with an FQE
        model Q̂(s_t, a_t) and V̂(s_t) = E_{a~π} Q̂(s_t, a)

What the estimators make of it: per-step importance ratios ρ_t = π(a_t | s_t) / μ(a_t | h_t) and their
running products w_t = Π_{t' ≤ t} ρ_{t'} (IS, PDIS, WIS: Precup, Sutton & Singh, 2000; CWPDIS: Voloshin
et al., 2019), and with Q̂, V̂ the doubly robust V̂_DR = Σ_t γ^t [w_t (r_t − Q̂(s_t, a_t)) + w_{t−1} V̂(s_t)]
(Jiang & Li, 2016; weighted: Thomas & Brunskill, 2016). Both probabilities are of the same kind of
object (the censored Gaussian of ``robot_rl.ope.target``, or −A·log 2 for uniform actions), so their
ratio is a ratio of densities with respect to one base measure.

``load_trajectories`` does both. Trajectory i is episode i's transitions t = 0 .. T_i − 1, where an
episode of L stored steps has T_i = L − 1 (the last step's action and reward are never a transition:
the lake's step convention, as in the sampler); rows are padded to T = max_i T_i.

Rewards, by the sampler's rules (``data_lake.sampler``): r_t is the episode's stored reward of step t
(its own task's sparse success after a_t: the sampler's ``commanded`` / ``task`` rows); with
``reward_task=k``, r_t = label_k[t + 1], task k's stored success label after a_t (the sampler's
MT-Opt rule; labels come from ``robot-rl lake label --task k``).

Hindsight goals (``goal_source``, the sampler's goal sources of the same names): ``final`` gives
episode i its own last stored observation as the goal, g = o_{L−1} (images of every camera; the goal
state is achieved_goal_{L−1}, else state_{L−1}, as the sampler's); ``future`` a step j ~ U{1 .. L−1}
of it (seeded, drawn in lake order), and the trajectory stops at j (the goal's own step: what the
behavior needed to get there). The reward is then the sampler's ``reward_rule``: ``distance``,
r_t = 1[‖ag_{t+1} − g_state‖ < ε], or ``index``, r_t = 1[t + 1 = j].
``success_terminal`` ends each
trajectory at its first rewarded transition (success is absorbing), as ``rollout(stop_on_success=True)``
does for the simulator's truth; without it the return counts every rewarded step of the logged horizon.

Observations are shown to each network as it was trained (its ``ObservationSpec``), as
``robot_rl.policy.LearnedPolicy`` shows the simulator's: the spec's cameras, the state vector
(proprioception, then the scene vector ``achieved_goal`` when the spec observes it), the episode's
commanded goal (``goal/images/<camera>``, ``goal/state``: what ``env.render_goal`` and
``env.scene_goal`` gave the truth rollouts) and the task id of the episode's task.

Errors (each names the lake, ref, episode and step where it applies): an empty selection; a logged
action the behavior side gives probability 0 (log μ = −inf: an error, never silently dropped, since
dropping trajectories biases every estimator); an action dimension that differs between the policy
and the data; ``behavior="logged"`` on episodes without ``action_logp`` (the error names the option
that fits a behavior model instead).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from data_lake import Lake
from data_lake.batch import Observation
from robot_rl.nets import ObservationSpec
from robot_rl.ope.data import Trajectories
from robot_rl.ope.target import RandomTarget, Target

FIELD = "action_logp"
GOAL_SOURCES = ("commanded", "final", "future")  # whose goal a goal-conditioned policy is evaluated on
GOAL_REWARDS = ("distance", "index")  # the hindsight reward rules (the sampler's ``reward_rule``)


class BehaviorScorer(Protocol):
    """A fitted behavior model (``robot_rl.ope.behavior.BehaviorModel``)."""

    def score_logged(self, data: LoggedData) -> np.ndarray: ...


class QModel(Protocol):
    """A fitted Q^π (``robot_rl.ope.fqe.FQEModel``)."""

    spec: ObservationSpec

    def q(
        self, obs: Observation, goals: Observation | None, task_ids: torch.Tensor | None, actions: torch.Tensor
    ) -> torch.Tensor: ...

    def v(self, obs: Observation, goals: Observation | None, task_ids: torch.Tensor | None) -> torch.Tensor: ...


@dataclasses.dataclass(frozen=True)
class LoggedData:
    """The M logged transitions of N whole episodes (episode-major, step order), and their goals.

    ``steps`` holds the per-transition arrays the lake has among ``images/<camera>`` uint8 (M, H, W, 3),
    ``state`` (M, S), ``achieved_goal`` (M, G) and ``sim_state`` (M, D); ``goals`` the commanded goals
    per episode (``images/<camera>`` (N, H, W, 3), ``state`` (N, G)) with ``has_goal`` flags (N,).
    """

    lake: str
    ref: str
    snapshot_id: str
    episode_ids: tuple[str, ...]  # (N,)
    episode_tasks: tuple[str, ...]  # (N,) each episode's task
    metadata: tuple[dict[str, Any], ...]  # (N,) each episode's metadata (env_seed, policy, noise, ...)
    lengths: np.ndarray  # (N,) int64 transitions per episode, T_i >= 1
    actions: np.ndarray  # (M, A) float32 logged actions a_t
    rewards: np.ndarray  # (M,) float64 r_t
    logged_logp: np.ndarray  # (M,) float64 the lake's log μ(a_t | h_t); NaN where the episode has none
    steps: dict[str, np.ndarray]
    goals: dict[str, np.ndarray]
    has_goal: dict[str, np.ndarray]
    vocabulary: tuple[str, ...]  # the snapshot's task names, sorted (the sampler's task ids)
    goal_source: str = "commanded"  # commanded: the episodes' own goals and rewards | final | future (hindsight)
    goal_reward: str = "distance"  # hindsight rewards: "distance" (‖ag' − g‖ < ε) | "index" (the goal's own step)
    goal_epsilon: float = 0.05

    # ------------------------------------------------------------ shape
    @property
    def num_episodes(self) -> int:
        return len(self.episode_ids)

    @property
    def num_steps(self) -> int:
        return int(self.lengths.sum())

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def horizon(self) -> int:
        return int(self.lengths.max())

    @property
    def starts(self) -> np.ndarray:
        """(N,) first row of each episode."""
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    @property
    def episode_of(self) -> np.ndarray:
        """(M,) the episode of each row."""
        return np.repeat(np.arange(self.num_episodes), self.lengths)

    @property
    def step_of(self) -> np.ndarray:
        """(M,) the step t of each row within its episode."""
        return np.arange(self.num_steps) - np.repeat(self.starts, self.lengths)

    @property
    def mask(self) -> np.ndarray:
        """(N, T) True on real steps."""
        return np.arange(self.horizon)[None, :] < self.lengths[:, None]

    @property
    def has_logged_logp(self) -> np.ndarray:
        """(N,) whether each episode stores ``action_logp``."""
        return np.array([not np.isnan(self.logged_logp[self.rows_of(i)]).any() for i in range(self.num_episodes)])

    def rows_of(self, i: int) -> np.ndarray:
        """Rows of episode ``i``."""
        start = int(self.starts[i])
        return np.arange(start, start + int(self.lengths[i]))

    def padded(self, values: np.ndarray) -> np.ndarray:
        """Per-row values (M,) as (N, T), 0 past each episode's end."""
        out = np.zeros((self.num_episodes, self.horizon), np.float64)
        out[self.mask] = values
        return out

    def where(self, row: int) -> str:
        """'episode <id> step <t>' of a row, for error messages."""
        return f"episode {self.episode_ids[int(self.episode_of[row])]} step {int(self.step_of[row])}"

    # ------------------------------------------------------------ observations as a network sees them
    def observations(self, spec: ObservationSpec, rows: np.ndarray) -> tuple[Observation, Observation | None]:
        """Host observations (uint8 images (B, H, W, 3)) of ``rows`` for networks of ``spec``, and their
        commanded goals (None when the spec has no goal)."""
        images = {}
        for cam, size in zip(spec.cameras, spec.image_sizes, strict=True):
            images[cam] = torch.from_numpy(self._images(f"images/{cam}", size, self.steps)[rows])
        parts = []
        if spec.proprio_dim:
            parts.append(self._field("state", "the proprioceptive state")[rows])
        if spec.scene_state_dim:
            parts.append(self._field("achieved_goal", "the scene vector (scene_state)")[rows])
        state = np.concatenate(parts, axis=1).astype(np.float32) if parts else None
        got = 0 if state is None else state.shape[1]
        if got != spec.state_dim:
            raise ValueError(
                f"the networks expect a {spec.state_dim}-dim state ({spec.proprio_dim} proprioception + "
                f"{spec.scene_state_dim} scene); the lake's episodes give {got}"
            )
        obs = Observation(images, None if state is None else torch.from_numpy(state))
        if not spec.has_goal:
            return obs, None
        ep = self.episode_of[rows]
        gimages = {}
        for cam, size in zip(spec.goal_cameras, spec.goal_image_sizes, strict=True):
            gimages[cam] = torch.from_numpy(self._images(f"images/{cam}", size, self.goals, goal=True)[ep])
        gstate = None
        if spec.goal_state_dim:
            g = self._goal("state", ep)
            if g.shape[1] != spec.goal_state_dim:
                raise ValueError(
                    f"the networks expect a {spec.goal_state_dim}-dim goal state; the lake's is {g.shape[1]}"
                )
            gstate = torch.from_numpy(g.astype(np.float32))
        return obs, Observation(gimages, gstate)

    def device_batches(
        self,
        spec: ObservationSpec,
        task_id: Callable[[str], int | None],
        device: str | torch.device,
        batch_size: int = 1024,
    ) -> Iterator[tuple[np.ndarray, Observation, Observation | None, torch.Tensor | None]]:
        """(rows, observations, goals, task ids) on ``device`` in batches of ``batch_size`` rows; task ids
        (``task_id(episode task)``) only for task-conditioned networks."""
        tids = None
        if spec.num_tasks:
            per_episode = [task_id(t) for t in self.episode_tasks]
            tids = np.array([-1 if k is None else k for k in per_episode], np.int64)[self.episode_of]
        for start in range(0, self.num_steps, batch_size):
            rows = np.arange(start, min(start + batch_size, self.num_steps))
            obs, goals = self.observations(spec, rows)
            task_ids = None if tids is None else torch.from_numpy(tids[rows]).to(device)
            yield rows, obs.to(device), None if goals is None else goals.to(device), task_ids

    def _field(self, key: str, what: str) -> np.ndarray:
        if key not in self.steps:
            raise ValueError(f"the networks observe {what}, but the lake {self.lake} ({self.ref}) has no {key!r} field")
        return self.steps[key]

    def _images(self, key: str, size: tuple[int, int], arrays: dict[str, np.ndarray], goal: bool = False) -> np.ndarray:
        where = "commanded goal" if goal else "observation"
        if key not in arrays:
            have = sorted(k.split("/", 1)[1] for k in arrays if k.startswith("images/"))
            raise ValueError(
                f"the networks need {where} camera {key.split('/', 1)[1]!r}; the lake's episodes have {have}"
            )
        a = arrays[key]
        if tuple(a.shape[1:3]) != tuple(size):
            raise ValueError(
                f"the networks were trained on {tuple(size)} {where} images from {key!r}; "
                f"the lake stores {a.shape[1:3]}"
            )
        if goal:
            self._goal(key, np.arange(self.num_episodes))
        return a

    def _goal(self, key: str, episodes: np.ndarray) -> np.ndarray:
        if key not in self.goals or not self.has_goal[key][episodes].all():
            missing = [i for i in np.unique(episodes) if key not in self.goals or not self.has_goal[key][i]]
            raise ValueError(
                f"the networks are goal-conditioned but episode {self.episode_ids[missing[0]]} stores no commanded "
                f"goal 'goal/{key}' ({len(missing)} such episodes): evaluate on episodes with commanded goals"
            )
        return self.goals[key][episodes]


# ---------------------------------------------------------------------------- reading the lake
def load_logged(
    lake_uri: str,
    ref: str = "main",
    *,
    task: str | None = None,
    episodes: Sequence[str] | None = None,
    max_episodes: int | None = None,
    reward_task: str | None = None,
    success_terminal: bool = False,
    cameras: Sequence[str] | None = None,
    goal_source: str = "commanded",
    goal_reward: str = "distance",
    goal_epsilon: float = 0.05,
    goal_seed: int = 0,
) -> LoggedData:
    """Whole episodes of snapshot ``ref`` of the lake at ``lake_uri``: those of ``task`` (None: every task),
    restricted to the ids ``episodes`` if given, the first ``max_episodes`` of them in lake order.
    ``cameras`` (None: all) limits the image streams read. See the module docstring for rewards and for
    the hindsight goal sources (``goal_source``, ``goal_reward``, ``goal_epsilon``, ``goal_seed``)."""
    hindsight = check_goal_source(goal_source, goal_reward, goal_epsilon)
    if hindsight and reward_task is not None:
        raise ValueError(
            f"reward_task={reward_task!r} and goal_source={goal_source!r} both define the reward: pick one "
            "(a task's success labels, or reaching the hindsight goal)"
        )
    view = Lake.open(lake_uri).checkout(ref)
    records = view.episodes(task)
    if episodes is not None:
        wanted = set(episodes)
        missing = wanted - {r.episode_id for r in view.episodes()}
        if missing:
            raise ValueError(
                f"{len(missing)} episode ids are not in lake {lake_uri} at {ref}, e.g. {sorted(missing)[0]}"
            )
        records = [r for r in records if r.episode_id in wanted]
    if max_episodes is not None:
        if max_episodes < 1:
            raise ValueError(f"max_episodes must be >= 1, got {max_episodes}")
        records = records[:max_episodes]
    if not records:
        what = f"task {task!r}" if task else "any task"
        sel = f" among the {len(set(episodes or ()))} given episode ids" if episodes is not None else ""
        raise ValueError(f"lake {lake_uri} at {ref} (snapshot {view.snapshot_id}) holds no episodes of {what}{sel}")
    schema = view.schema or {"step": {}, "goal": {}}
    keep_cams = None if cameras is None else {f"images/{c}" for c in cameras}
    fields = [
        k
        for k in schema["step"]
        if (k.startswith("images/") and (keep_cams is None or k in keep_cams))
        or k in ("state", "achieved_goal", "sim_state", "action", "reward", FIELD)
    ]
    goal_keys = [k for k in schema["goal"] if not k.startswith("images/") or keep_cams is None or k in keep_cams]
    pieces: list[_Piece | None] = [None] * len(records)
    position = {r.episode_id: k for k, r in enumerate(records)}
    rng = np.random.default_rng(goal_seed)
    goal_steps = [  # hindsight goal step j of each episode, relative to its start
        r.stop - r.start - 1 if goal_source == "final" else int(rng.integers(1, max(r.stop - r.start, 2)))
        for r in records
    ]
    for name in dict.fromkeys(r.segment for r in records):
        seg = view.read_segment(name, fields)
        if reward_task is not None and reward_task not in seg.labels:
            raise ValueError(
                f"reward_task={reward_task!r}: segment {name} of lake {lake_uri} ({ref}) stores no success labels "
                f"for it; run `robot-rl lake label --task {reward_task}` first"
            )
        for r in (r for r in records if r.segment == name):
            a, b = r.start, r.stop
            if hindsight:
                j = goal_steps[position[r.episode_id]]
                where = f"segment {name} of lake {lake_uri}"
                reward, goal = _hindsight(seg.steps, a, b, j, goal_reward, goal_epsilon, where)
            elif reward_task is None:
                reward = seg.steps["reward"][a : b - 1]  # r_t after a_t; the last step is no transition
            else:
                reward = seg.labels[reward_task][a + 1 : b]  # task k's success after a_t
            n = len(reward)
            if success_terminal and (reward > 0).any():
                n = int(np.argmax(reward > 0)) + 1  # up to the first rewarded transition
            if not hindsight:
                goal = {
                    k: seg.goals[k][r.index] for k in goal_keys if k in seg.goals and seg.has_goal.get(k, [])[r.index]
                }
            logp = seg.steps[FIELD][a : a + n] if FIELD in seg.steps else np.full(n, np.nan)  # NaN: none logged
            steps = {k: v[a : a + n] for k, v in seg.steps.items() if k not in ("action", "reward", FIELD)}
            pieces[position[r.episode_id]] = _Piece(steps, goal, seg.steps["action"][a : a + n], reward[:n], logp)
    done = [p for p in pieces if p is not None]
    assert len(done) == len(records)
    common = set.intersection(*(set(p.steps) for p in done))  # fields every selected episode has
    goals, has_goal = {}, {}
    for k in dict.fromkeys(k for p in done for k in p.goal) if hindsight else goal_keys:
        flags = np.array([k in p.goal for p in done])
        if flags.any():
            like = next(p.goal[k] for p in done if k in p.goal)
            goals[k] = np.stack([p.goal.get(k, np.zeros_like(like)) for p in done])
            has_goal[k] = flags
    return LoggedData(
        lake=str(lake_uri),
        ref=ref,
        snapshot_id=view.snapshot_id,
        episode_ids=tuple(r.episode_id for r in records),
        episode_tasks=tuple(r.task for r in records),
        metadata=tuple(dict(r.metadata) for r in records),
        lengths=np.array([len(p.action) for p in done], np.int64),
        actions=np.concatenate([p.action for p in done]).astype(np.float32),
        rewards=np.concatenate([p.reward for p in done]).astype(np.float64),
        logged_logp=np.concatenate([p.logp for p in done]).astype(np.float64),
        steps={k: np.concatenate([p.steps[k] for p in done]) for k in sorted(common)},
        goals=goals,
        has_goal=has_goal,
        vocabulary=tuple(sorted({r.task for r in view.episodes()})),
        goal_source=goal_source,
        goal_reward=goal_reward,
        goal_epsilon=goal_epsilon,
    )


def check_goal_source(source: str, reward: str, epsilon: float) -> bool:
    """Validate a goal source and its reward rule; True for the hindsight ones (final, future)."""
    if source not in GOAL_SOURCES:
        raise ValueError(f"unknown goal source {source!r}; known: {', '.join(GOAL_SOURCES)}")
    if reward not in GOAL_REWARDS:
        raise ValueError(f"goal_reward must be one of {GOAL_REWARDS}, got {reward!r}")
    if not epsilon > 0:
        raise ValueError(f"goal_epsilon must be > 0, got {epsilon}")
    return source != "commanded"


def _hindsight(
    steps: dict[str, np.ndarray], a: int, b: int, j: int, rule: str, epsilon: float, where: str
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rewards r_t (t < j) and the goal of an episode (rows a..b−1) whose goal is its own step j."""
    src = steps.get("achieved_goal", steps.get("state"))  # the goal state, as the sampler's
    if rule == "distance":
        if "achieved_goal" not in steps:
            raise ValueError(
                f"goal_reward='distance' needs the step field 'achieved_goal' (the scene vector); {where} has none: "
                "use goal_reward='index'"
            )
        ag = steps["achieved_goal"]
        reward = (np.linalg.norm(ag[a + 1 : a + j + 1] - ag[a + j], axis=-1) < epsilon).astype(np.float64)  # (j,)
    else:
        reward = (np.arange(1, j + 1) == j).astype(np.float64)  # (j,) only on reaching step j itself
    goal = {k: v[a + j] for k, v in steps.items() if k.startswith("images/")}
    if src is not None:
        goal["state"] = src[a + j]
    return reward, goal


@dataclasses.dataclass(frozen=True)
class _Piece:
    """One episode's transitions as read from its segment."""

    steps: dict[str, np.ndarray]
    goal: dict[str, np.ndarray]
    action: np.ndarray
    reward: np.ndarray
    logp: np.ndarray


# ---------------------------------------------------------------------------- scoring
def behavior_logp(data: LoggedData, behavior: str | BehaviorScorer, fit: Callable[[], BehaviorScorer]) -> np.ndarray:
    """log μ(a_t | h_t) (M,): the lake's ``action_logp`` (``"logged"``), or a behavior model's."""
    if behavior == "logged":
        lacking = ~data.has_logged_logp
        if lacking.any():
            i = int(np.argmax(lacking))
            policy = data.metadata[i].get("policy")
            how = f", collected with policy={policy!r}" if policy is not None else ""
            raise ValueError(
                f"lake {data.lake} at {data.ref} (snapshot {data.snapshot_id}): {int(lacking.sum())} of "
                f"{data.num_episodes} selected episodes have no logged action probability (the step field "
                f"{FIELD!r}; e.g. episode {data.episode_ids[i]}{how}). collect writes it for noisy and random "
                "policies only. Pass behavior='model' to fit a behavior model μ̂(a|s) on the data instead "
                "(or a fitted robot_rl.ope.behavior.BehaviorModel)"
            )
        return data.logged_logp
    if behavior == "model":
        return fit().score_logged(data)
    if isinstance(behavior, str):
        raise ValueError(f"behavior must be 'logged', 'model' or a fitted behavior model, got {behavior!r}")
    return behavior.score_logged(data)


def model_values(
    data: LoggedData,
    fqe: QModel,
    means: np.ndarray | None,
    task_vocab: Sequence[str],
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Q̂(s_t, a_t) and V̂(s_t) (M,) each, from a fitted Q^π. ``means``: π's m(s_t) (M, A) when known
    (so V̂ averages over exactly the target's actions), else the model's own policy."""
    spec = fqe.spec
    if spec.action_dim != data.action_dim:
        raise ValueError(f"the FQE model acts in {spec.action_dim} dims; the logged data has {data.action_dim}")
    vocab = tuple(task_vocab)

    def task_id(name: str) -> int | None:
        if name not in vocab:
            raise ValueError(f"the FQE model's task vocabulary {list(vocab)} lacks the episodes' task {name!r}")
        return vocab.index(name)

    if spec.num_tasks and len(vocab) != spec.num_tasks:
        raise ValueError(f"the FQE model is conditioned on {spec.num_tasks} tasks; task_vocab names {len(vocab)}")
    device = next(iter(fqe.nets.parameters())).device if hasattr(fqe, "nets") else torch.device("cpu")
    q_out, v_out = np.empty(data.num_steps), np.empty(data.num_steps)
    for rows, obs, goals, task_ids in data.device_batches(spec, task_id, device, batch_size):
        actions = torch.from_numpy(data.actions[rows]).to(device)
        if hasattr(fqe, "q_and_v"):
            mean = None if means is None else torch.from_numpy(means[rows]).to(device)
            q, v = fqe.q_and_v(obs, goals, task_ids, actions, mean_actions=mean)
        else:
            q, v = fqe.q(obs, goals, task_ids, actions), fqe.v(obs, goals, task_ids)
        q_out[rows], v_out[rows] = q.double().cpu().numpy(), v.double().cpu().numpy()
    return q_out, v_out


def trajectories_from(
    data: LoggedData,
    target: Target | str,
    gamma: float,
    *,
    behavior: str | BehaviorScorer = "logged",
    fqe: QModel | None = None,
    task_vocab: Sequence[str] | None = None,
    behavior_cfg: Any = None,
    device: str | torch.device = "cpu",
) -> Trajectories:
    """The estimators' input from logged data: log π of the logged actions under ``target`` (a
    ``robot_rl.ope.target`` policy, or ``"random"``), log μ (``behavior``: ``"logged"`` — the lake's
    ``action_logp`` —, ``"model"`` — a ``BehaviorModel`` fitted here on these episodes with
    ``behavior_cfg`` —, or a fitted model), and Q̂ / V̂ from ``fqe`` (task ids by ``task_vocab``,
    default the snapshot's sorted tasks, the sampler's ids)."""
    if isinstance(target, str):
        if target != "random":
            raise ValueError(f"target must be a robot_rl.ope.target policy or 'random', got {target!r}")
        target = RandomTarget(data.action_dim)
    if target.action_dim is not None and target.action_dim != data.action_dim:
        raise ValueError(
            f"target policy {target.name} acts with {target.action_dim}-dimensional actions but the logged data "
            f"(lake {data.lake} at {data.ref}) has {data.action_dim}-dimensional actions"
        )
    target_logp, means = target.score_logged(data)

    def fit() -> BehaviorScorer:
        from robot_rl.ope.behavior import fit_behavior

        return fit_behavior(data.lake, f"snapshot:{data.snapshot_id}", behavior_cfg, data.episode_ids, device)

    mu = behavior_logp(data, behavior, fit)
    bad = ~np.isfinite(mu)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"log μ(a|s) = {mu[row]} at {data.where(row)} (lake {data.lake}, {data.ref}): the logged action has "
            "probability 0 under the behavior policy, so its importance ratio is undefined"
        )
    bad = np.isnan(target_logp) | (target_logp == np.inf)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"log π(a|s) = {target_logp[row]} at {data.where(row)}: the target policy gave no probability")
    q_hat = v_hat = None
    if fqe is not None:
        fqe_sigma, fqe_gamma = getattr(fqe, "sigma", None), getattr(getattr(fqe, "cfg", None), "gamma", None)
        if fqe_sigma is not None and target.sigma is not None and abs(fqe_sigma - target.sigma) > 1e-12:
            raise ValueError(f"the FQE model evaluates noise σ={fqe_sigma}, the target policy has σ={target.sigma}")
        if fqe_gamma is not None and abs(fqe_gamma - gamma) > 1e-12:
            raise ValueError(f"the FQE model was fitted with gamma={fqe_gamma}, the estimate asks for gamma={gamma}")
        q, v = model_values(data, fqe, means, task_vocab or data.vocabulary)
        q_hat, v_hat = data.padded(q), data.padded(v)
    return Trajectories(
        rewards=data.padded(data.rewards),
        mask=data.mask,
        behavior_logp=data.padded(mu),
        target_logp=data.padded(target_logp),
        gamma=gamma,
        q_hat=q_hat,
        v_hat=v_hat,
        behavior_source="logged" if behavior == "logged" else "model",
    )


def load_trajectories(
    lake_uri: str,
    ref: str = "main",
    *,
    target: Target | str,
    gamma: float,
    task: str | None = None,
    episodes: Sequence[str] | None = None,
    behavior: str | BehaviorScorer = "logged",
    fqe: QModel | None = None,
    max_episodes: int | None = None,
    reward_task: str | None = None,
    success_terminal: bool = False,
    task_vocab: Sequence[str] | None = None,
    behavior_cfg: Any = None,
    device: str | torch.device = "cpu",
) -> Trajectories:
    """``load_logged`` then ``trajectories_from``: the logged episodes of ``task`` in snapshot ``ref`` as
    the estimators' ``Trajectories`` for ``target``."""
    data = load_logged(
        lake_uri,
        ref,
        task=task,
        episodes=episodes,
        max_episodes=max_episodes,
        reward_task=reward_task,
        success_terminal=success_terminal,
    )
    return trajectories_from(
        data,
        target,
        gamma,
        behavior=behavior,
        fqe=fqe,
        task_vocab=task_vocab,
        behavior_cfg=behavior_cfg,
        device=device,
    )


__all__ = [
    "GOAL_REWARDS",
    "GOAL_SOURCES",
    "LoggedData",
    "behavior_logp",
    "check_goal_source",
    "load_logged",
    "load_trajectories",
    "model_values",
    "trajectories_from",
]
