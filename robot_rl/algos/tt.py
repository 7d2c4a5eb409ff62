"""Trajectory Transformer (Janner et al., 2021): discretized trajectories as tokens, planned by beam search.

Tokens. Every dimension of a step's observation features x_t (N dims), action a_t (M dims), reward r_t
and return-to-go R̂_t is discretized into V bins (:class:`Discretizer`, quantile bins by default), so a
step is T = N + M + 2 tokens and a window of K steps is the stream::

    (x_t^1 .. x_t^N, a_t^1 .. a_t^M, r_t, R̂_t)  for t = 1..K,     token = V·(position in step) + bin

(one embedding table with an offset per position in the step). x is the FROZEN encoder's observation
features: for state observations the normalized state; for images the embedding of an encoder frozen at
its initialization (or loaded pretrained weights): the bins are fitted once on those features, and a
moving encoder would make them stale. A goal or task conditions the stream through one continuous
prefix token W_c·g (g: the encoder's goal/task features), not through discretized goal tokens.

Model and loss. A causal transformer (``robot_rl/nets/transformer.py``) predicts each token from those
before it (and the prefix), with one V-way head per position in the step::

    L(θ) = −Σ_j w_j log p_θ(τ_j | τ_<j, c) / Σ_j w_j        w_j = m_j·m_{j−1}·(λ_a for action tokens, else 1)

m: 1 for tokens of real steps, 0 for left padding of the window.

Planning (beam search, :func:`beam_plan`). From the context (the last steps of the episode, then the
current x_t tokens), for h = 0..H−1: each of the B beams is expanded E times by sampling the M action
tokens (top-k sampling, the first action dimension without replacement so expansions differ); the
reward and return-to-go are read as expectations under the model, r̂ = Σ_v p(v)·c_v (c: bin centers),
and their most likely tokens appended; beams are scored

    score = Σ_{i ≤ h} γ^i r̂_i + γ^{h+1} R̂_{h+1}

and the best B kept; the next observation tokens are then sampled (top-k). The agent takes the first
action of the best beam after H steps (decoded by bin centers, clamped to [-1, 1]).

Choices and deviations from the paper:
- R̂ is the sampler's return-to-go (``SequenceSampler``), discounted with γ as in the paper
  (``discounted_returns``; ``robot-rl pretrain`` passes γ to the sampler), multiplied back by the
  task's return scale so that rewards and R̂ share units. Undiscounted, the beam score would add a
  γ-discounted partial sum to an undiscounted tail.
- Bins are fitted on the first training batch (its real steps), not on the whole dataset; values
  outside its range fall into the edge bins. A NaN value is an error.
- The prefix token replaces the paper's unconditioned stream for goals and tasks.
- The beam starts from the context alone and grows by E per step (E^h rows at step h, capped at B);
  the paper starts from B copies of the context and samples actions independently, which can fill
  the beam with duplicates. Hence E = 4 here (the paper: 2).
- No dropout, no KV cache (each planned token runs the transformer over the cropped context);
  the context is cropped to the last K steps at step boundaries.
- Past steps in the acting context keep the planner's R̂ token and the observed reward's token.
- ``deterministic`` acting plans with a generator seeded by ``cfg.seed`` at every call (same
  observation and context, same action); stochastic acting uses the caller's generator.
- A transition ``Batch`` (the contract suite, finetuning) is read as 2-step windows
  (``SequenceBatch.from_transitions``); ``robot-rl pretrain`` samples K-step windows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_lake.batch import Batch, Observation
from data_lake.sequences import SequenceBatch
from robot_rl.algos.base import AlgoConfig, BaseAlgorithm, Policy, seeded
from robot_rl.algos.dt import goal_dim
from robot_rl.nets import ObservationEncoder, ObservationSpec
from robot_rl.nets.transformer import CausalTransformer


@dataclasses.dataclass(frozen=True)
class TTConfig(AlgoConfig):
    """AlgoConfig's fields (``hidden``, ``critic_lr``, ``tau`` unused; ``actor_lr`` trains the model) plus:"""

    actor_lr: float = 6e-4
    sequence_length: int = 10  # K, steps per training window and acting context (the sampler draws K-step windows)
    bins: int = 100  # V per dimension
    discretization: str = "quantile"  # "quantile" | "uniform"
    embed_dim: int = 128
    layers: int = 4
    heads: int = 4
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    action_weight: float = 5.0  # λ_a: the weight of action tokens in the loss (the paper's)
    beam_width: int = 32  # B
    horizon: int = 5  # H steps planned
    expansion: int = 4  # E candidates per beam and step (the beam grows from 1 row: E^h rows at step h, at most B)
    top_k: int = 10  # action and observation tokens are sampled among the k most likely bins
    discounted_returns: bool = True  # R̂_t = Σ γ^k r_{t+k} (the paper); False: undiscounted (as DT's)

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.sequence_length, self.layers, self.heads, self.beam_width, self.horizon, self.expansion) < 1:
            raise ValueError(
                "sequence_length, layers, heads, beam_width, horizon and expansion must be >= 1, got "
                f"{self.sequence_length}, {self.layers}, {self.heads}, {self.beam_width}, {self.horizon}, "
                f"{self.expansion}"
            )
        if self.bins < 2 or not self.expansion <= self.top_k <= self.bins:
            raise ValueError(f"need bins >= 2 and expansion <= top_k <= bins, got {self.bins=}, {self.top_k=}")
        if self.discretization not in ("quantile", "uniform"):
            raise ValueError(f"discretization must be 'quantile' or 'uniform', got {self.discretization!r}")
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by heads {self.heads}")
        if self.weight_decay < 0 or self.grad_clip <= 0 or self.action_weight <= 0:
            raise ValueError(f"need weight_decay >= 0, grad_clip > 0, action_weight > 0, got {self}")


class Discretizer(nn.Module):
    """Per-dimension bins for T dims: ``edges`` (T, V+1) and ``centers`` (T, V), buffers (saved, loaded)."""

    edges: torch.Tensor
    centers: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, dims: int, bins: int, mode: str = "quantile"):
        super().__init__()
        self.V, self.mode = bins, mode
        self.register_buffer("edges", torch.zeros(dims, bins + 1))
        self.register_buffer("centers", torch.zeros(dims, bins))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, values: torch.Tensor) -> None:
        """Bins from values (n, T): quantile (each bin holds n/V of the values) or uniform on [min, max]."""
        self.check(values, "fit")
        v, V = values.float(), self.V
        lo, hi = v.min(0).values, v.max(0).values  # (T,)
        if self.mode == "quantile":
            s = v.sort(0).values  # (n, T)
            inner = s[(torch.arange(1, V, device=v.device) * len(v)) // V]  # (V−1, T)
            edges = torch.cat([lo[None], inner, hi[None]]).T  # (T, V+1)
        else:
            edges = lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, V + 1, device=v.device)  # (T, V+1)
        self.edges.copy_(edges)
        self.centers.copy_((edges[:, 1:] + edges[:, :-1]) / 2)
        self.fitted.fill_(True)

    def check(self, values: torch.Tensor, what: str) -> None:
        if values.shape[-1] != self.edges.shape[0] or not values.numel():
            raise ValueError(
                f"{what}: values must be (..., {self.edges.shape[0]}) and non-empty, got {tuple(values.shape)}"
            )
        bad = torch.isnan(values).flatten(0, -2).any(0)  # (T,)
        if bad.any():
            raise ValueError(
                f"{what}: NaN in token dims {bad.nonzero().flatten().tolist()} (x, then a, r, R̂); "
                "the data has NaN values: repair or drop those episodes before training"
            )

    def encode(self, values: torch.Tensor, dims: slice = slice(None)) -> torch.Tensor:
        """Values (..., T') of the dims ``dims`` -> bins (..., T') int64 in [0, V)."""
        inner = self.edges[dims, 1:-1].contiguous()  # (T', V−1)
        if values.shape[-1] != inner.shape[0]:
            raise ValueError(f"encode: values have {values.shape[-1]} dims, the bins {inner.shape[0]}")
        nan = torch.isnan(values)
        if nan.any():
            bad = nan.reshape(-1, values.shape[-1]).any(0).nonzero().flatten().tolist()
            raise ValueError(f"encode: NaN in value dims {bad}; repair or drop those episodes / observations")
        flat = values.reshape(-1, values.shape[-1]).T.contiguous()  # (T', n)
        return torch.searchsorted(inner, flat, right=True).T.reshape(values.shape)

    def decode(self, tokens: torch.Tensor, dims: slice = slice(None)) -> torch.Tensor:
        """Bins (..., T') of the dims ``dims`` -> bin centers (..., T')."""
        c = self.centers[dims]  # (T', V)
        idx = torch.arange(c.shape[0], device=tokens.device)
        return c[idx, tokens]


class TTModel(nn.Module):
    """Token stream (B, L) (starting at a step boundary) and conditioning (B, G) -> next-token logits."""

    def __init__(self, cfg: TTConfig, obs_dim: int, action_dim: int, cond_dim: int):
        super().__init__()
        self.N, self.M, self.V, self.K = obs_dim, action_dim, cfg.bins, cfg.sequence_length
        self.T = T = obs_dim + action_dim + 2  # tokens per step: x, a, r, R̂
        D = cfg.embed_dim
        self.discretizer = Discretizer(T, cfg.bins, cfg.discretization)
        self.embed = nn.Embedding(T * cfg.bins, D)  # row V·(position in step) + bin
        self.prefix = nn.Linear(cond_dim, D) if cond_dim else None  # the goal / task token
        self.P = int(cond_dim > 0)
        self.transformer = CausalTransformer(D, cfg.layers, cfg.heads, self.P + self.K * T)
        self.head = nn.Linear(D, T * cfg.bins)  # one V-way head per position in the step

    def trunk(self, tokens: torch.Tensor, cond: torch.Tensor | None, valid: torch.Tensor | None) -> torch.Tensor:
        B, L = tokens.shape
        pos = torch.arange(L, device=tokens.device) % self.T  # (L,)
        h = self.embed(tokens + pos * self.V)  # (B, L, D)
        if self.prefix is not None:
            if cond is None:
                raise ValueError("the model is goal/task-conditioned but no conditioning features were given")
            h = torch.cat([self.prefix(cond)[:, None], h], 1)  # (B, 1 + L, D)
            if valid is not None:
                valid = torch.cat([valid.new_ones(B, 1), valid], 1)
        return self.transformer(h, valid)  # (B, P + L, D)

    def forward(
        self, tokens: torch.Tensor, cond: torch.Tensor | None, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, P + L, V): output i predicts stream token i + 1 − P."""
        out = self.trunk(tokens, cond, valid)
        L1 = out.shape[1]
        nxt = (torch.arange(L1, device=out.device) + 1 - self.P) % self.T  # (P + L,) position of the predicted token
        W = self.head.weight.view(self.T, self.V, -1)[nxt]  # (P + L, V, D): each output's head
        return torch.einsum("bld,lvd->blv", out, W) + self.head.bias.view(self.T, self.V)[nxt]  # (B, P + L, V)

    def next_logits(self, tokens: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, V) of the token after the stream (B, L) (the head on the last output only)."""
        h = self.trunk(tokens, cond, None)[:, -1]  # (B, D)
        p = tokens.shape[1] % self.T
        return F.linear(
            h, self.head.weight[p * self.V : (p + 1) * self.V], self.head.bias[p * self.V : (p + 1) * self.V]
        )


def frozen_features(encoder: ObservationEncoder, seq: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Observation features x (B, K, N) of every frame (one pass, no gradients) and the conditioning g (B, G)."""
    B, K = seq.mask.shape
    with torch.no_grad():
        g = encoder.goal_features(seq.goals, seq.task_ids)  # (B, G) or None
        goals = seq.goals
        if encoder.early and goals is not None:  # early fusion stacks the goal image on every frame
            goals = Observation({c: x.repeat_interleave(K, 0) for c, x in goals.images.items()}, goals.state)
        (x,) = encoder.observation_features([seq.observations], goals)  # (B·K, N)
    return x.view(B, K, -1), g


def step_values(x: torch.Tensor, seq: SequenceBatch) -> torch.Tensor:
    """(x, a, r, R̂) per step (B, K, T), R̂ in reward units (× the task's return scale)."""
    rtg = seq.returns_to_go * seq.return_scale[:, None]  # (B, K)
    return torch.cat([x, seq.actions, seq.rewards[..., None], rtg[..., None]], -1)


def tt_loss(
    tokens: torch.Tensor, cond: torch.Tensor | None, mask: torch.Tensor, model: TTModel, cfg: TTConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted next-token cross-entropy over windows: tokens (B, K·T), step mask (B, K)."""
    B, L = tokens.shape
    m = mask.repeat_interleave(model.T, 1)  # (B, L) 1 for tokens of real steps
    logits = model(tokens, cond, m.bool())[:, :-1]  # (B, P + L − 1, V)
    start = 1 - model.P  # the first stream token with a prediction
    target = tokens[:, start:]  # (B, P + L − 1)
    pred_valid = torch.cat([m.new_ones(B, model.P), m[:, :-1]], 1)  # the predicting position is real (or the prefix)
    pos = torch.arange(start, L, device=tokens.device) % model.T  # (P + L − 1,)
    is_action = (pos >= model.N) & (pos < model.N + model.M)
    w = m[:, start:] * pred_valid * torch.where(is_action, cfg.action_weight, 1.0)  # (B, P + L − 1)
    ce = F.cross_entropy(logits.reshape(-1, model.V), target.reshape(-1), reduction="none").view_as(w)
    n = w.sum().clamp_min(1e-8)
    loss = (ce * w).sum() / n
    hit = (logits.argmax(-1) == target).float()
    real = m[:, start:] * pred_valid
    act_w = real * is_action
    metrics = {
        "model/ce_loss": loss.detach(),
        "model/action_ce": ((ce * act_w).sum() / act_w.sum().clamp_min(1)).detach(),
        "model/token_accuracy": ((hit * real).sum() / real.sum().clamp_min(1)).detach(),
        "data/window_fill": mask.mean().detach(),
    }
    return loss, metrics


# ------------------------------------------------------------------------------------------ planning
NextLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (stream (R, L), env index (R,)) -> (R, V)


def sample_top_k(
    logits: torch.Tensor, k: int, n: int, generator: torch.Generator | None, replacement: bool
) -> torch.Tensor:
    """n tokens (R, n) per row from softmax(logits (R, V)) restricted to the k most likely bins."""
    top = logits.topk(min(k, logits.shape[1]), -1)
    probs = torch.softmax(top.values.float(), -1).clamp_min(1e-12)  # (R, k), no zero mass in the top k
    pick = torch.multinomial(probs, n, replacement=replacement, generator=generator)  # (R, n)
    return top.indices.gather(1, pick)


def beam_plan(
    next_logits: NextLogits,
    context: torch.Tensor,
    N: int,
    M: int,
    centers: torch.Tensor,
    width: int,
    horizon: int,
    expansion: int,
    top_k: int,
    gamma: float,
    generator: torch.Generator | None,
    max_steps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search from ``context`` (B, L) (ending with the current x tokens) -> the best beam's first
    step tokens (B, M + 2) (a, r, R̂) and its score (B,). ``centers`` (T, V) decode r and R̂;
    ``max_steps`` crops the stream to that many last steps (at step boundaries) before each call."""
    T = N + M + 2
    B, dev = context.shape[0], context.device
    seq, env = context, torch.arange(B, device=dev)  # rows are env-major throughout
    cum = torch.zeros(B, device=dev)
    first = context.new_zeros(B, 0)

    def logits_of(s: torch.Tensor) -> torch.Tensor:
        if max_steps is not None and s.shape[1] > max_steps * T:
            s = s[:, -(-(s.shape[1] - max_steps * T) // T) * T :]  # drop whole steps
        return next_logits(s, env)

    score = cum
    for h in range(horizon):
        first_action = sample_top_k(logits_of(seq), top_k, expansion, generator, replacement=False)  # (R, E)
        seq, env = seq.repeat_interleave(expansion, 0), env.repeat_interleave(expansion, 0)
        cum, first = cum.repeat_interleave(expansion, 0), first.repeat_interleave(expansion, 0)
        seq = torch.cat([seq, first_action.reshape(-1, 1)], 1)
        for _ in range(M - 1):
            seq = torch.cat([seq, sample_top_k(logits_of(seq), top_k, 1, generator, True)], 1)
        estimates = []
        for c in (centers[N + M], centers[N + M + 1]):  # r̂, then R̂: expectations, the likeliest token appended
            p = torch.softmax(logits_of(seq).float(), -1)  # (R, V)
            estimates.append((p * c).sum(-1))
            seq = torch.cat([seq, p.argmax(-1, keepdim=True)], 1)
        r, value = estimates
        cum = cum + gamma**h * r
        score = cum + gamma ** (h + 1) * value  # (R,)
        if h == 0:
            first = seq[:, -(M + 2) :]
        per = seq.shape[0] // B
        keep = score.view(B, per).topk(min(width, per), -1).indices  # (B, W), best first
        rows = (keep + torch.arange(B, device=dev)[:, None] * per).flatten()
        seq, env, cum, first, score = seq[rows], env[rows], cum[rows], first[rows], score[rows]
        if h + 1 < horizon:
            for _ in range(N):
                seq = torch.cat([seq, sample_top_k(logits_of(seq), top_k, 1, generator, True)], 1)
    per = seq.shape[0] // B
    best = torch.arange(B, device=dev) * per  # topk sorted: the first row of each env is its best
    return first[best], score[best]


class TTPolicy(Policy):
    """The frozen encoder and the trajectory model; plans by beam search with a per-env context of past steps."""

    actor: TTModel

    def __init__(self, encoder: ObservationEncoder, actor: TTModel, cfg: TTConfig):
        super().__init__(encoder, actor)
        self.cfg = cfg
        self.context: torch.Tensor | None = None  # (B, L) tokens of the episode's past steps; None: no episode

    def reset_context(self, num_envs: int) -> None:
        """New episodes in ``num_envs`` envs: empty contexts."""
        self.context = torch.zeros(num_envs, 0, dtype=torch.long, device=self.actor.head.weight.device)

    def observe_rewards(self, rewards: np.ndarray | torch.Tensor, task_ids: torch.Tensor | None = None) -> None:
        """Replace the last step's planned reward token by the observed reward's."""
        ctx = self.context
        if ctx is None or ctx.shape[1] == 0:
            return
        r = torch.as_tensor(np.asarray(rewards, np.float32), device=ctx.device)[:, None]  # (B, 1)
        i = self.actor.N + self.actor.M
        ctx[:, -2] = self.actor.discretizer.encode(r, slice(i, i + 1))[:, 0]

    @torch.no_grad()
    def forward(
        self,
        observation: Observation,
        goal: Observation | None = None,
        task_ids: torch.Tensor | None = None,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        model, cfg = self.actor, self.cfg
        g = self.encoder.goal_features(goal, task_ids)  # (B, G) or None
        (x,) = self.encoder.observation_features([observation], goal)  # (B, N)
        B = x.shape[0]
        x_tokens = model.discretizer.encode(x, slice(0, model.N))  # (B, N)
        episode = self.context is not None and self.context.shape[0] == B
        past = self.context if episode and self.context is not None else x_tokens[:, :0]
        context = torch.cat([past, x_tokens], 1)  # (B, L): past steps, then x_t (the planner crops to K steps)
        if deterministic or generator is None:
            generator = torch.Generator(x.device).manual_seed(cfg.seed)

        def next_logits(s: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
            return model.next_logits(s, None if g is None else g[env])

        first, _ = beam_plan(
            next_logits,
            context,
            model.N,
            model.M,
            model.discretizer.centers,
            cfg.beam_width,
            cfg.horizon,
            cfg.expansion,
            cfg.top_k,
            cfg.gamma,
            generator,
            cfg.sequence_length,
        )  # (B, M + 2)
        a = model.discretizer.decode(first[:, : model.M], slice(model.N, model.N + model.M)).clamp(-1.0, 1.0)
        if episode:
            self.context = torch.cat([context, first], 1)[:, -cfg.sequence_length * model.T :]  # whole steps
        return a  # (B, A)


class TT(BaseAlgorithm):
    name = "tt"
    config_class = TTConfig
    cfg: TTConfig
    frozen_state: ClassVar[tuple[str, ...]] = ("encoder.",)  # the encoder stays at its initialization

    @classmethod
    def build_model(cls, cfg: TTConfig, spec: ObservationSpec, encoder: ObservationEncoder) -> TTModel:
        state = encoder.cfg.state_hidden if encoder.state_net is not None else spec.state_dim
        obs_dim = encoder.cfg.feature_dim * len(spec.cameras) + state  # D_o of observation_features
        return TTModel(cfg, obs_dim, spec.action_dim, goal_dim(encoder))

    @classmethod
    def build_policy(cls, cfg: TTConfig, spec: ObservationSpec) -> TTPolicy:  # type: ignore[override]
        cls.check_config(cfg)
        with seeded(cfg.seed):
            encoder = ObservationEncoder(spec, cfg.encoder)
            return TTPolicy(encoder, cls.build_model(cfg, spec, encoder), cfg)

    def build_networks(self) -> dict[str, nn.Module]:
        encoder = self.encoder().requires_grad_(False)
        return {"encoder": encoder, "actor": self.build_model(self.cfg, self.spec, encoder)}

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "actor": torch.optim.AdamW(
                self.nets.actor.parameters(), lr=self.cfg.actor_lr, weight_decay=self.cfg.weight_decay
            )
        }

    def encoder_optimizer(self) -> str:
        return "actor"  # the encoder is frozen; auxiliary heads (finetuning) train with the model

    @property
    def actor(self) -> TTModel:
        actor = self.nets.actor
        assert isinstance(actor, TTModel)
        return actor

    @property
    def policy(self) -> TTPolicy:
        return TTPolicy(self.nets.encoder, self.actor, self.cfg)

    def tokenize(self, seq: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stream tokens (B, K·T) and conditioning (B, G); fits the bins on the first batch's real steps."""
        x, g = frozen_features(self.nets.encoder, seq)
        values = step_values(x, seq)  # (B, K, T)
        disc = self.actor.discretizer
        if not bool(disc.fitted):
            disc.fit(values[seq.mask.bool()])
        return disc.encode(values).flatten(1), g

    def update(self, batch: Batch | SequenceBatch) -> dict[str, float]:  # type: ignore[override]
        seq = batch if isinstance(batch, SequenceBatch) else SequenceBatch.from_transitions(batch)
        tokens, g = self.tokenize(seq)
        loss, metrics = tt_loss(tokens, g, seq.mask, self.actor, self.cfg)
        loss = self.with_auxiliary(loss, metrics)
        opt = self.optimizers["actor"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), self.cfg.grad_clip)
        opt.step()
        self.step += 1
        return self.metrics(metrics)
