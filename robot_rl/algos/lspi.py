"""LSPI (Lagoudakis & Parr, 2003): least-squares policy iteration, a linear Q on random features of a frozen encoder.

Equations (``docs/algorithms.md``, "LSPI"), x = the frozen encoder's embedding of (s, g or task id)::

    φ(s, a)   = [ sqrt(2/D)·cos(W[x; a] + c), 1 ]       W ~ N(0, I/ℓ²), c ~ U[0, 2π): D random Fourier features
    Q_w(s, a) = φ(s, a)ᵀw
    LSTD-Q(π): A = (1/n)·Σ φ(s, a)(φ(s, a) − γ(1 − d)·φ̄_π(s'))ᵀ,  b = (1/n)·Σ φ(s, a)·r,  w = (A + λI)⁻¹b
    φ̄_π(s')  = φ(s', π(s'))  (π greedy);  π_0 uniform: the mean of φ(s', a') over uniform a'
    LSPI:      repeat  w_{k+1} = LSTD-Q(π_k),  π_{k+1}(s) = argmax_a Q_{w_{k+1}}(s, a)  until π stops changing

The solve is an LU factorization of A + λI (A is not symmetric), float64 (``robot_rl/ope/lstd.py``).

Choices and deviations:
- The encoder is frozen: LSTD-Q has no gradient to train it. It is randomly initialized from the seed
  (the default state encoder passes the normalized state, goal and a random task embedding through
  unchanged; images get random conv features), or loaded from a checkpoint or saved policy
  (``encoder_checkpoint``: the same observation spec and encoder config). Its tensors and the random
  features never change (``frozen_state``).
- Features: random Fourier features of the concatenation [x, a] and a constant, not the paper's
  hand-made bases (polynomials or RBFs, one block per discrete action): actions are continuous here.
  ``W x`` is computed once per state; each action sample adds only its own term.
- Policy improvement over continuous actions: the argmax is the cross-entropy method's best sample on
  the cached embedding (``qtopt.cem``, nothing re-encoded), or the best point of a grid of
  ``grid_points`` per action dimension (``improvement="grid"``, exact over the grid). Either is
  approximate over the box [-1, 1]^A. Candidate actions are ranked in float32; the features that
  enter A and b are float64.
- Streaming instead of a fixed sample. Each iteration accumulates A and b over
  ``samples_per_iteration`` fresh rows from the pretraining loop's batches (``update(batch)`` adds a
  batch). When enough rows are in, it solves, improves the policy and starts the next iteration's
  statistics at the next batch. Until then A and b hold the statistics the current w solved,
  checkpointed for inspection. The paper reuses one sample set at every iteration. Fresh rows from
  the same snapshot have the same distribution and need no memory of the rows.
- π_0 is the uniform policy on the box (the mean over ``uniform_samples`` actions, or the whole grid):
  with w_0 = 0 every action ties.
- Stopping: the greedy actions of a fixed probe set (the first ``probe_size`` rows seen, stored as
  embeddings) are compared after each improvement. When at most ``probe_tol`` of them moved by more
  than ``action_tol`` in some dimension, or after ``max_iterations``
  solves, LSPI stops and keeps its last w. The paper stops on ‖w_{k+1} − w_k‖ < ε instead. The probe
  CEM uses a fixed seed, so an unchanged w gives unchanged actions. Later updates only report
  metrics.
- A and b are averages, so λ does not depend on the number of rows (λ·n on the paper's sums).
- ``reward_offset`` is added to every reward (as IQL's): −1 turns sparse 0/1 success rewards into
  OGBench's success − 1, so a sample without a success still has b ≠ 0.
- Stochastic acting (``deterministic=False``) is the greedy action plus N(0, ``act_noise``²) noise,
  clipped to the box: how collect's noisy policies and the OPE target policies act.
- There is no optimizer and no gradient: ``step`` counts the batches seen, and one process holds the
  statistics (no data-parallel ranks).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, cast

import torch
from torch import nn

from data_lake.batch import Batch
from robot_rl.algos.base import AlgoConfig, BaseAlgorithm, Policy, encode, seeded
from robot_rl.algos.qtopt import CEMConfig, cem
from robot_rl.nets import ObservationEncoder, ObservationSpec
from robot_rl.ope.lstd import LSTDStatistics, StateActionRFF, load_encoder

IMPROVEMENTS = ("cem", "grid")
MAX_GRID_ACTIONS = 4096


@dataclasses.dataclass(frozen=True)
class LSPIConfig(AlgoConfig):
    """AlgoConfig's fields (``hidden``, learning rates, ``tau`` and ``layer_norm`` unused: no networks
    are trained) plus:"""

    num_features: int = 512  # D random Fourier features of [x, a] (and a constant)
    bandwidth: float = 1.0  # ℓ: W ~ N(0, I/ℓ²), the Gaussian kernel's length scale
    ridge: float = 1e-3  # λ, on the averaged A
    samples_per_iteration: int = 50_000  # rows accumulated per LSTD-Q solve
    max_iterations: int = 20  # LSTD-Q solves at most
    probe_size: int = 256  # rows whose greedy actions decide convergence
    probe_tol: float = 0.02  # stop when at most this fraction of probe actions changed
    action_tol: float = 0.1  # a continuous greedy action changed if some dimension moved more
    improvement: str = "cem"  # "cem": CEM on the cached embedding | "grid": argmax over a grid
    grid_points: int = 5  # per action dimension, for "grid"
    uniform_samples: int = 16  # uniform actions averaging φ(s', ·) under π_0 (cem)
    act_noise: float = 0.1  # σ of the Gaussian noise of stochastic acting
    reward_offset: float = 0.0  # added to every reward (-1: OGBench's success − 1, as IQL's reward_offset)
    cem: CEMConfig = dataclasses.field(default_factory=CEMConfig)
    encoder_checkpoint: str = ""  # "": a random frozen encoder; else a checkpoint or policy dir to load it from

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_features < 1 or not self.bandwidth > 0 or self.ridge < 0:
            raise ValueError(
                f"need num_features >= 1, bandwidth > 0, ridge >= 0; got {self.num_features}, {self.bandwidth}, "
                f"{self.ridge}"
            )
        if self.max_iterations < 1 or not 1 <= self.probe_size <= self.samples_per_iteration:
            raise ValueError(
                f"need max_iterations >= 1 and 1 <= probe_size <= samples_per_iteration; got {self.max_iterations}, "
                f"{self.probe_size}, {self.samples_per_iteration}"
            )
        if not 0 <= self.probe_tol < 1 or self.action_tol < 0 or self.act_noise < 0:
            raise ValueError(
                f"need 0 <= probe_tol < 1, action_tol >= 0, act_noise >= 0; got {self.probe_tol}, {self.action_tol}, "
                f"{self.act_noise}"
            )
        if self.improvement not in IMPROVEMENTS:
            raise ValueError(f"improvement must be one of {IMPROVEMENTS}, got {self.improvement!r}")
        if self.grid_points < 2 or self.uniform_samples < 1:
            raise ValueError(
                f"need grid_points >= 2, uniform_samples >= 1; got {self.grid_points}, {self.uniform_samples}"
            )


class LinearQ(nn.Module):
    """Q_w(x, a) = φ(x, a)ᵀw on random Fourier features of [x, a] (fixed, from the seed); w is LSTD-Q's."""

    w: torch.Tensor

    def __init__(self, feature_dim: int, action_dim: int, cfg: LSPIConfig):
        super().__init__()
        self.features = StateActionRFF(feature_dim, action_dim, cfg.num_features, cfg.bandwidth, cfg.seed)
        self.register_buffer("w", torch.zeros(self.features.out_dim, dtype=torch.float64))

    def values(self, x_part: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q of K actions per state on the cached projection W_x x (B, D), in its dtype: (B, K, A) -> (B, K)."""
        w = self.w.to(x_part.dtype)
        return self.features.fourier(x_part, actions) @ w[:-1] + w[-1]  # the constant feature's weight

    def forward(self, x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q(x, a) for one action per state: (B, F), (B, A) -> (B,) float64."""
        return self.features(x, actions) @ self.w


def action_grid(action_dim: int, points: int, device: torch.device) -> torch.Tensor:
    """Every point of a ``points``-per-dimension grid on [-1, 1]^A -> (points^A, A)."""
    axis = torch.linspace(-1.0, 1.0, points, device=device)
    return torch.cartesian_prod(*[axis] * action_dim).reshape(-1, action_dim)


@torch.no_grad()
def greedy(x: torch.Tensor, q: LinearQ, cfg: LSPIConfig, generator: torch.Generator | None) -> torch.Tensor:
    """π(s) = argmax_a Q(x, a) on embeddings (B, F): CEM's best sample or the best grid point -> (B, A) float32."""
    B, A = x.shape[0], q.features.action_dim
    x_part = q.features.state_part(x, torch.float32)  # (B, D), once per state; float32 to rank actions
    if cfg.improvement == "grid":
        grid = action_grid(A, cfg.grid_points, x.device)  # (K, A)
        scores = q.values(x_part, grid.expand(B, -1, -1))  # (B, K)
        return grid[scores.argmax(1)]  # (B, A)
    return cem(lambda a: q.values(x_part, a), B, A, cfg.cem, generator, x.device).action  # (B, A)


class LSPIPolicy(Policy):
    """The encoder and the linear Q; acts greedily (CEM or grid), or greedily plus Gaussian noise."""

    def __init__(self, encoder: ObservationEncoder, q: LinearQ, cfg: LSPIConfig):
        nn.Module.__init__(self)
        self.encoder, self.q, self.cfg = encoder, q, cfg

    def act_on(self, features: torch.Tensor, deterministic: bool, generator: torch.Generator | None) -> torch.Tensor:
        action = greedy(features, self.q, self.cfg, generator)  # (B, A)
        if deterministic or self.cfg.act_noise == 0:
            return action
        noise = torch.randn(action.shape, generator=generator, device=action.device)  # (B, A)
        return (action + self.cfg.act_noise * noise).clamp(-1.0, 1.0)


class LSPIState(nn.Module):
    """What LSPI iterates on: LSTD-Q's running A, b, n; the probe set (embeddings and their greedy
    actions); ``progress`` = (iteration, probe rows filled, fraction of probe actions the last
    improvement changed)."""

    probe_features: torch.Tensor
    probe_actions: torch.Tensor
    progress: torch.Tensor

    def __init__(self, num_features: int, feature_dim: int, action_dim: int, probe_size: int):
        super().__init__()
        self.stats = LSTDStatistics(num_features)
        self.register_buffer("probe_features", torch.zeros(probe_size, feature_dim))
        self.register_buffer("probe_actions", torch.zeros(probe_size, action_dim))
        self.register_buffer("progress", torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))

    @property
    def iteration(self) -> int:
        return int(self.progress[0])

    @property
    def probe_filled(self) -> int:
        return int(self.progress[1])

    @property
    def changed(self) -> float:
        return float(self.progress[2])


class LSPI(BaseAlgorithm):
    """A frozen encoder, a linear Q on random features of it, and LSPI's statistics; acts greedily."""

    name = "lspi"
    config_class = LSPIConfig
    cfg: LSPIConfig
    frozen_state: ClassVar[tuple[str, ...]] = ("encoder.", "q.features.")  # state no update changes

    @classmethod
    def build_policy(cls, cfg: AlgoConfig, spec: ObservationSpec) -> LSPIPolicy:
        """The acting networks alone: the encoder and the linear Q (no statistics, no probe set)."""
        cls.check_config(cfg)
        assert isinstance(cfg, LSPIConfig)
        with seeded(cfg.seed):
            encoder = ObservationEncoder(spec, cfg.encoder)
        return LSPIPolicy(encoder.requires_grad_(False), LinearQ(encoder.out_dim, spec.action_dim, cfg), cfg)

    def build_networks(self) -> dict[str, nn.Module]:
        cfg, A = self.cfg, self.spec.action_dim
        if cfg.improvement == "grid" and cfg.grid_points**A > MAX_GRID_ACTIONS:
            raise ValueError(
                f"a grid of {cfg.grid_points}^{A} = {cfg.grid_points**A} actions exceeds {MAX_GRID_ACTIONS}: "
                "use improvement=cem or fewer grid_points"
            )
        encoder = self.encoder()
        if cfg.encoder_checkpoint:
            loaded = load_encoder(cfg.encoder_checkpoint)
            try:
                encoder.load_state_dict(loaded.state_dict())
            except RuntimeError as e:
                raise ValueError(
                    f"the encoder of {cfg.encoder_checkpoint} does not fit this observation spec and encoder config "
                    f"(set algo.encoder like the checkpoint's, and the same obs): {e}"
                ) from e
        encoder.requires_grad_(False)
        q = LinearQ(encoder.out_dim, A, cfg)
        state = LSPIState(q.features.out_dim, encoder.out_dim, A, cfg.probe_size)
        return {"encoder": encoder, "q": q, "lspi": state}

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    @property
    def q(self) -> LinearQ:
        return cast(LinearQ, self.nets["q"])

    @property
    def state(self) -> LSPIState:
        return cast(LSPIState, self.nets["lspi"])

    @property
    def converged(self) -> bool:
        s = self.state
        return s.iteration >= self.cfg.max_iterations or (s.iteration >= 2 and s.changed <= self.cfg.probe_tol)

    def probe_generator(self) -> torch.Generator:
        """The same CEM samples at every probe evaluation: an unchanged w gives unchanged probe actions."""
        return torch.Generator(self.device).manual_seed(self.cfg.seed)

    @torch.no_grad()
    def next_features(self, next_x: torch.Tensor) -> torch.Tensor:
        """φ̄_π(s') (B, D + 1): π_0 uniform (mean over uniform actions or the grid), then the greedy π_k."""
        q, cfg = self.q, self.cfg
        if self.state.iteration > 0:
            return q.features(next_x, greedy(next_x, q, cfg, self.rng))
        B, A = next_x.shape[0], self.spec.action_dim
        if cfg.improvement == "grid":
            actions = action_grid(A, cfg.grid_points, next_x.device).expand(B, -1, -1)  # (B, K, A)
        else:
            actions = torch.rand((B, cfg.uniform_samples, A), generator=self.rng, device=next_x.device) * 2 - 1
        return q.features.many(q.features.state_part(next_x), actions).mean(1)  # (B, D + 1)

    @torch.no_grad()
    def fill_probe(self, x: torch.Tensor) -> None:
        s = self.state
        take = min(self.cfg.probe_size - s.probe_filled, x.shape[0])
        if take > 0:
            s.probe_features[s.probe_filled : s.probe_filled + take] = x[:take]
            s.progress[1] += take

    @torch.no_grad()
    def improve(self) -> None:
        """w ← LSTD-Q solve; π ← greedy in w; measure how many probe actions changed."""
        s, cfg = self.state, self.cfg
        self.q.w.copy_(s.stats.solve(cfg.ridge))
        probe = s.probe_features[: s.probe_filled]  # (P, F)
        new = greedy(probe, self.q, cfg, self.probe_generator())  # (P, A)
        moved = (new - s.probe_actions[: s.probe_filled]).abs().amax(1) > cfg.action_tol  # (P,)
        s.progress[2] = 1.0 if s.iteration == 0 else moved.double().mean()
        s.probe_actions[: s.probe_filled] = new
        s.progress[0] += 1

    def update(self, batch: Batch) -> dict[str, float]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:
                raise RuntimeError("LSPI accumulates its statistics in one process: run it without torchrun ranks")
        with torch.no_grad():
            enc = encode(self.nets.encoder, batch)
            x, next_x = enc.features, enc.require_next()  # (B, F) each
            self.fill_probe(x)
            s, q = self.state, self.q
            phi = q.features(x, batch.actions)  # (B, D + 1)
            phi_next = self.next_features(next_x)  # (B, D + 1)
            rewards = batch.rewards.double() + self.cfg.reward_offset  # (B,)
            not_done = 1.0 - batch.terminals.double()  # (B,)
            q_data = phi @ q.w  # (B,)
            residual = q_data - rewards - self.cfg.gamma * not_done * (phi_next @ q.w)  # (B,)
            converged = self.converged
            if not converged:
                if s.stats.rows >= self.cfg.samples_per_iteration:
                    s.stats.reset()  # the first batch of a new iteration
                s.stats.add(phi, phi_next, rewards, batch.terminals, self.cfg.gamma)
                if s.stats.rows >= self.cfg.samples_per_iteration:
                    self.improve()
        self.step += 1
        return self.metrics(
            {
                "lstd/bellman_residual": residual.pow(2).mean(),
                "lstd/q_data": q_data.mean(),
                "lstd/w_norm": q.w.norm(),
                "lspi/iteration": s.progress[0],
                "lspi/rows": s.stats.n.double(),
                "lspi/probe_changed": s.progress[2],
                "lspi/converged": torch.tensor(float(self.converged), device=self.device),
            }
        )

    @torch.no_grad()
    def q_estimate(self, batch: Batch) -> torch.Tensor:
        """Q_w(s, a) of the batch's own actions (B,)."""
        enc = encode(self.nets.encoder, batch, next_observations=False)
        return self.q(enc.features, batch.actions).float()

    def attach_auxiliary(self, modules: dict[str, nn.Module]) -> None:
        raise ValueError("LSPI's encoder is frozen and it has no optimizer: auxiliary losses (aux.xi > 0) cannot apply")

    @property
    def policy(self) -> LSPIPolicy:
        return LSPIPolicy(self.nets.encoder, self.q, self.cfg)
