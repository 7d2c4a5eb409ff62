"""Decision Transformer (Chen et al., 2021): offline RL as return- (or goal-) conditioned sequence modeling.

A window of the last K steps is a sequence of 3K tokens, step k contributing, in this order::

    c_k = W_R·R̂_k           (return-to-go R̂_k = Σ_{i ≥ k} r_i / scale_task)      no goal
        = W_g·g              (the goal's embedding: the shared encoder's goal features)  goal reaching
    s_k = W_s·φ(s_k, g)      (φ: the shared encoder's features, goal/task joined as every algorithm does)
    a_k = W_a·a_k

each plus a learned embedding of the step's timestep in its episode (and the transformer's learned
positional embedding). A causal transformer (``robot_rl/nets/transformer.py``) reads the tokens and
the action head reads the output at the *state* token of step k, which has seen c_{≤k}, s_{≤k},
a_{<k} only::

    L(θ) = −Σ_{b,k} m_{b,k} log π_θ(a_{b,k} | h_{b,k}) / Σ m         (m: 1 real step, 0 padding)

Return normalization (per task, ``data_lake/sequences.py``): R̂ is divided by the largest episode
return of the row's task in the data, so R̂_0 = 1 is the best episode of the data. Acting conditions
on ``target_return`` (normalized; 1.0 = the data's best) and subtracts each reward the environment
gives, divided by the same scale (the actor's ``return_scale`` buffer: per task id for
task-conditioned networks, else the largest scale seen, recorded from the training batches).

Images: each update embeds the B·K frames of its windows in one encoder pass; the encoder trains with
the sequence model (it is its only loss). Acting keeps the window across steps: :class:`DTPolicy`
holds a context of K steps per env once an episode starts (``reset_context``) and is told the
rewards as they come (``observe_rewards``); without an episode (``algo.act`` on a batch) every call
is a one-step window conditioned on ``target_return``.

Choices and deviations from the paper:
- The action head is a Gaussian N(tanh μ, σ²) trained by likelihood (BC's default head), not a tanh
  output trained by MSE: the mean is the deterministic action (the paper's MSE solution when σ is
  constant) and σ gives stochastic actions for finetuning and exploration.
- No dropout (the paper uses 0.1): every random number comes from the algorithm's generator.
- AdamW with gradient clipping (0.25) as the paper; no learning-rate warmup.
- A transition ``Batch`` (the contract suite, a finetuning replay) is read as windows of two steps,
  ``SequenceBatch.from_transitions``; ``robot-rl pretrain`` samples real K-step windows
  (``SequenceSampler``), which is what this algorithm is for.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from data_lake.batch import Batch, Observation
from data_lake.sequences import SequenceBatch
from robot_rl.algos.base import AlgoConfig, BaseAlgorithm, Nets, Policy, seeded
from robot_rl.nets import GaussianActor, ObservationEncoder, ObservationSpec
from robot_rl.nets.heads import Gaussian
from robot_rl.nets.transformer import CausalTransformer


@dataclasses.dataclass(frozen=True)
class DTConfig(AlgoConfig):
    hidden: tuple[int, ...] = (128,)  # the action head's MLP on the transformer's output
    actor_lr: float = 1e-4
    sequence_length: int = 20  # K, the context in steps (the sampler draws windows of this length)
    embed_dim: int = 128
    layers: int = 3
    heads: int = 1
    max_timestep: int = 1000  # timesteps beyond are clamped to max_timestep − 1
    target_return: float = 1.0  # normalized return-to-go to act for (1.0: the data's best episode of the task)
    weight_decay: float = 1e-4
    grad_clip: float = 0.25
    log_std_min: float = -5.0
    log_std_max: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sequence_length < 1 or self.layers < 1 or self.heads < 1 or self.max_timestep < 1:
            raise ValueError(
                f"sequence_length, layers, heads and max_timestep must be >= 1, got {self.sequence_length}, "
                f"{self.layers}, {self.heads}, {self.max_timestep}"
            )
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by heads {self.heads}")
        if self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError(f"weight_decay must be >= 0 and grad_clip > 0, got {self.weight_decay}, {self.grad_clip}")
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"log_std_min must be < log_std_max, got {self.log_std_min}, {self.log_std_max}")


class DTActor(nn.Module):
    """(state features (B, K, F), conditioning (B, K, C), actions (B, K, A), timesteps, mask) -> π(a_k | h_k)."""

    return_scale: torch.Tensor  # (max(num_tasks, 1),) buffer

    def __init__(self, cfg: DTConfig, spec: ObservationSpec, feature_dim: int, cond_dim: int):
        super().__init__()
        D = cfg.embed_dim
        self.max_timestep = cfg.max_timestep
        self.embed_cond = nn.Linear(cond_dim, D)  # R̂ (C = 1) or the goal's features
        self.embed_state = nn.Linear(feature_dim, D)
        self.embed_action = nn.Linear(spec.action_dim, D)
        self.embed_timestep = nn.Embedding(cfg.max_timestep, D)
        self.embed_ln = nn.LayerNorm(D)
        self.transformer = CausalTransformer(D, cfg.layers, cfg.heads, 3 * cfg.sequence_length)
        self.head = GaussianActor(D, spec.action_dim, cfg.hidden, cfg.log_std_min, cfg.log_std_max)
        # R̂ scale per task id (task-conditioned) or one (else); data statistics, not learned
        self.register_buffer("return_scale", torch.zeros(max(spec.num_tasks, 1)))  # 0: not recorded yet

    def forward(
        self,
        features: torch.Tensor,
        cond: torch.Tensor,
        actions: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor,
    ) -> Gaussian:
        B, K, _ = features.shape
        time = self.embed_timestep(timesteps.clamp(0, self.max_timestep - 1))  # (B, K, D)
        tokens = torch.stack(
            [self.embed_cond(cond) + time, self.embed_state(features) + time, self.embed_action(actions) + time], dim=2
        )  # (B, K, 3, D): c_k, s_k, a_k
        tokens = self.embed_ln(tokens.reshape(B, 3 * K, -1))  # (B, 3K, D)
        valid = mask.bool().repeat_interleave(3, dim=1)  # (B, 3K)
        h = self.transformer(tokens, valid).view(B, K, 3, -1)[:, :, 1]  # (B, K, D): outputs at the s_k tokens
        return self.head(h)  # π(· | h_k), batch shape (B, K)


def goal_dim(encoder: ObservationEncoder) -> int:
    """Size D_g of the encoder's goal features (late-fused goal cameras, goal state, task embedding)."""
    spec, D = encoder.spec, encoder.cfg.feature_dim
    task = 0 if encoder.task_embedding is None else encoder.task_embedding.embedding_dim
    return len(encoder.late_cameras) * D + spec.goal_state_dim + task if spec.has_goal else task


def goal_token(encoder: ObservationEncoder) -> bool:
    """Whether the conditioning token is the goal's embedding (goal reaching with goal features) or R̂."""
    return encoder.spec.has_goal and goal_dim(encoder) > 0


def embed_window(encoder: ObservationEncoder, seq: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (B, K, F) of every frame (one encoder pass over the B·K frames) and the conditioning
    (B, K, C): the goal's features repeated, or R̂ (B, K, 1)."""
    B, K = seq.mask.shape
    g = encoder.goal_features(seq.goals, seq.task_ids)  # (B, D_g) or None, once per window
    goals = seq.goals
    if encoder.early and goals is not None:  # early fusion stacks the goal image on every frame
        goals = Observation({c: x.repeat_interleave(K, 0) for c, x in goals.images.items()}, goals.state)
    (f,) = encoder.observation_features([seq.observations], goals)  # (B·K, D_o)
    features = encoder.join(f, None if g is None else g.repeat_interleave(K, 0)).view(B, K, -1)  # (B, K, F)
    if goal_token(encoder):
        assert g is not None
        return features, g[:, None].expand(B, K, g.shape[1])  # (B, K, D_g)
    return features, seq.returns_to_go[..., None]  # (B, K, 1)


def dt_loss(
    features: torch.Tensor, cond: torch.Tensor, seq: SequenceBatch, nets: Nets
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = −Σ m log π(a_k | h_k) / Σ m over the windows' real steps."""
    dist = nets.actor(features, cond, seq.actions, seq.timesteps, seq.mask)
    log_prob = dist.log_prob(seq.actions)  # (B, K)
    m = seq.mask
    n = m.sum().clamp_min(1.0)
    loss = -(log_prob * m).sum() / n
    mse = ((dist.mode() - seq.actions).pow(2).mean(-1) * m).sum() / n
    metrics = {
        "actor/dt_loss": loss.detach(),
        "actor/mse": mse.detach(),
        "actor/log_std": dist.log_std.mean().detach(),
        "data/window_fill": m.mean().detach(),
    }
    return loss, metrics


class DTPolicy(Policy):
    """The encoder and the sequence model, with a per-env context of the last K steps while an episode runs."""

    actor: DTActor

    def __init__(self, encoder: ObservationEncoder, actor: DTActor, cfg: DTConfig):
        super().__init__(encoder, actor)
        self.K, self.target_return, self.has_goal = cfg.sequence_length, cfg.target_return, goal_token(encoder)
        self.context: dict[str, torch.Tensor] | None = None  # None: no episode, one-step windows
        self.t = 0  # steps of the running episode

    def reset_context(self, num_envs: int) -> None:
        """New episodes in ``num_envs`` envs: empty windows, R̂ = ``target_return``."""
        dev = next(iter(self.actor.parameters())).device
        self.context = {"rtg": torch.full((num_envs,), self.target_return, device=dev)}
        self.t = 0

    def observe_rewards(self, rewards: np.ndarray | torch.Tensor, task_ids: torch.Tensor | None = None) -> None:
        """R̂ ← R̂ − r / scale after the envs stepped (rewards (B,))."""
        if self.context is None:
            return
        rtg = self.context["rtg"]
        r = torch.as_tensor(np.asarray(rewards, np.float32), device=rtg.device)
        scale = self.actor.return_scale
        s = scale[task_ids] if task_ids is not None and len(scale) > 1 else scale[:1].expand_as(r)
        self.context["rtg"] = rtg - r / torch.where(s > 0, s, torch.ones_like(s))  # 0: no scale recorded

    @torch.no_grad()
    def forward(
        self,
        observation: Observation,
        goal: Observation | None = None,
        task_ids: torch.Tensor | None = None,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        B = observation.batch_size
        g = self.encoder.goal_features(goal, task_ids)  # (B, D_g) or None
        (f,) = self.encoder.observation_features([observation], goal)
        x = self.encoder.join(f, g)  # (B, F)
        ctx = self.context
        if ctx is None or ctx["rtg"].shape[0] != B:
            ctx = {"rtg": torch.full((B,), self.target_return, device=x.device)}
            t = 0
        else:
            t = self.t
        c = g if self.has_goal else ctx["rtg"][:, None]  # (B, C)
        assert c is not None

        def push(name: str, v: torch.Tensor) -> torch.Tensor:  # append step t, keep the last K
            old = ctx.get(name)
            return (v[:, None] if old is None else torch.cat([old, v[:, None]], 1))[:, -self.K :]

        ctx["features"], ctx["cond"] = push("features", x), push("cond", c)
        ctx["actions"] = push("actions", torch.zeros(B, self.actor.embed_action.in_features, device=x.device))
        ctx["timesteps"] = push("timesteps", torch.full((B,), t, dtype=torch.long, device=x.device))
        mask = torch.ones(ctx["timesteps"].shape, device=x.device)  # (B, k ≤ K): the window holds real steps only
        dist = self.actor(ctx["features"], ctx["cond"], ctx["actions"], ctx["timesteps"], mask)
        last = Gaussian(dist.mean[:, -1], dist.log_std[:, -1])  # π(· | h_t), (B, A)
        a = last.mode() if deterministic else last.sample(generator=generator)[0]  # (B, A)
        if self.context is not None:  # an episode runs: remember a_t for the next step's window
            ctx["actions"] = torch.cat([ctx["actions"][:, :-1], a[:, None]], 1)
            self.context, self.t = ctx, t + 1
        return a


class DT(BaseAlgorithm):
    name = "dt"
    config_class = DTConfig
    cfg: DTConfig

    @classmethod
    def build_dt_actor(cls, cfg: DTConfig, spec: ObservationSpec, encoder: ObservationEncoder) -> DTActor:
        return DTActor(cfg, spec, encoder.out_dim, goal_dim(encoder) if goal_token(encoder) else 1)

    @classmethod
    def build_policy(cls, cfg: DTConfig, spec: ObservationSpec) -> DTPolicy:  # type: ignore[override]
        cls.check_config(cfg)
        with seeded(cfg.seed):
            encoder = ObservationEncoder(spec, cfg.encoder)
            return DTPolicy(encoder, cls.build_dt_actor(cfg, spec, encoder), cfg)

    def build_networks(self) -> dict[str, nn.Module]:
        encoder = self.encoder()
        return {"encoder": encoder, "actor": self.build_dt_actor(self.cfg, self.spec, encoder)}

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        params = [p for m in (self.nets.encoder, self.nets.actor) for p in m.parameters()]
        fused = bool(params) and all(p.is_cuda for p in params)
        return {
            "actor": torch.optim.AdamW(
                params, lr=self.cfg.actor_lr, weight_decay=self.cfg.weight_decay, fused=fused or None
            )
        }

    @property
    def actor(self) -> DTActor:
        actor = self.nets.actor
        assert isinstance(actor, DTActor)
        return actor

    @property
    def policy(self) -> DTPolicy:
        return DTPolicy(self.nets.encoder, self.actor, self.cfg)

    def update(self, batch: Batch | SequenceBatch) -> dict[str, float]:  # type: ignore[override]
        seq = batch if isinstance(batch, SequenceBatch) else SequenceBatch.from_transitions(batch)
        features, cond = embed_window(self.nets.encoder, seq)
        loss, metrics = dt_loss(features, cond, seq, self.nets)
        loss = self.with_auxiliary(loss, metrics)  # the sequence model's loss trains the encoder
        opt = self.optimizers["actor"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], self.cfg.grad_clip)
        opt.step()
        self.record_return_scale(seq)
        self.step += 1
        return self.metrics(metrics)

    @torch.no_grad()
    def record_return_scale(self, seq: SequenceBatch) -> None:
        """Keep the data's R̂ scale for acting: per task id (task-conditioned), else the largest seen."""
        scale = self.actor.return_scale
        if len(scale) > 1:
            scale.index_copy_(0, seq.task_ids, seq.return_scale)
        else:
            scale.copy_(torch.maximum(scale, seq.return_scale.max()).reshape(1))
