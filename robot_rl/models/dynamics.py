"""A probabilistic ensemble of dynamics models in a frozen encoder's feature space (MBPO / PETS).

Used by the model-based offline algorithms (MOPO, MOReL, COMBO). Public API (the names of the shared
contract of issue 20, kept as agreed; the additions are marked *)::

    DynamicsConfig(ensemble_size=7, elites=5, hidden=(200,)*4, lr, weight_decay, holdout_fraction,
                   batch_size, max_epochs_since_update, max_steps, seed, *max_holdout, *holdout_metric,
                   *min_logvar, *max_logvar, *logvar_bound_coef)
    DynamicsEnsemble(obs_dim, action_dim, cfg)           # K members batched; .elite_idx (E,)
        forward(x (B, D), a (B, A)) -> mean, logvar (K, B, D + 1) of y = (Δx, r), in data units
        step(x, a, generator, members="elites", deterministic=False) -> ModelStep
    gaussian_nll(mean, logvar, target) -> (K,)            # *the pure loss kernel
    dynamics_loss(model, x, a, target, cfg) -> (loss, metrics)   # *the training loss (pure)
    *make_dynamics_optimizer(model, cfg) -> Adam                 # what fit_dynamics steps
    fit_dynamics(model, x, a, r, x_next, cfg, progress=False) -> FitReport
    rollout(model, x0, g, policy, horizon, generator, join=None, *terminal_fn=None, *reward_fn=None,
            *deterministic=False) -> Transitions
    ModelReplay(capacity, obs_dim, action_dim, goal_dim=0, device="cpu")   # add / sample / state_dict
    *ModelData, *transitions_from_sampler(sampler, encoder, ...), *transitions_from_lake(uri, ref, ...)

The space: x = f(s) is ``encoder.observation_features`` of a FROZEN encoder (for state observations with
the default encoder, the normalized state; for images, the embedding of an encoder loaded from a
checkpoint (``robot_rl.ope.lstd.load_encoder``) or frozen at its seeded random initialization). It must
stay frozen for as long as the model and its rollouts are used: synthetic transitions sit in a replay
for many updates, and a moving encoder would make every stored x, x' (and the model itself) stale.
The conditioning part g (``encoder.goal_features``: goal images, goal state, task embedding) is not
modelled: it is carried unchanged along a rollout, and actors and critics read ``encoder.join(x, g)``.
An encoder with *early* goal fusion computes x from (s, g) together, so x is no observation feature:
``transitions_from_sampler`` refuses it (use ``goal_fusion='late'``).

The model (Chua et al., 2018, PETS; Janner et al., 2019, MBPO): K members, each a Gaussian
``p_θk(Δx, r | x, a) = N(μ_θk(x, a), diag σ²_θk(x, a))``, an MLP with SiLU (Swish) activations whose
layers are ``EnsembleLinear`` (all K members in one batched matmul per layer). Inputs [x, a] are
standardized with the training split's mean and std, and so are the targets y = [x' − x, r]; these
statistics are buffers of the module (saved with it). The log-variance is bounded softly by learned
bounds (PETS appendix A.1)::

    logvar = max_lv − softplus(max_lv − raw);   logvar = min_lv + softplus(logvar − min_lv)

The loss of each member on its own minibatch (normalized units, mean over rows and the D + 1 outputs)::

    L_k = mean[(μ_k − y)² · exp(−logvar_k) + logvar_k] + c · (Σ max_lv − Σ min_lv)

(the Gaussian NLL up to constants, plus MBPO's 0.01 penalty that keeps the bounds tight), summed over
k; weight decay is Adam's L2 term (one coefficient for every layer, MBPO grows it with depth; the
log-variance bounds are not decayed).
Each member draws its own random minibatches of the training split (no bootstrap, as MBPO).

Early stopping and elites (MBPO, one deviation): a holdout of ``holdout_fraction`` of the rows (at
most ``max_holdout``) is drawn once. After every epoch each member's holdout loss is compared with its
best; an improvement (MSE: above 1% relative, as MBPO; NLL: above 0.01 nats per dimension) records the
member's parameters. Training stops after ``max_epochs_since_update`` epochs without any member
improving, or at ``max_steps`` gradient steps; every member is then restored to its best parameters
(MBPO only records them) and the E elites are the members with the lowest holdout loss.
Deviation: the holdout loss is the Gaussian NLL by default (``holdout_metric="nll"``; MBPO's MSE is
``"mse"``). The MSE ignores the variance head, so MSE-based stopping ends training (about 14 epochs on
the linear system of ``tests/test_dynamics.py``) before σ has been learned; σ is what MOPO's penalty
reads. With NLL stopping the learned σ recovers noise that grows with ‖x‖ and extrapolates it off the
data (2.4–2.9x at distance 2.5–4, the data within √3; seeds 0–2); with MSE stopping it does not
(0.7–1.1x).

What the two measures see (measured on that linear system): off the data's support the members'
means disagree (``disagreement`` 3–20x larger at distance 2.5–4, every seed and setting tried); the
learned σ extrapolates the noise's *trend* only, so with constant noise ``max_std_norm`` *shrinks* off
the support (0.2–0.7x) — MOPO's penalty then does not flag the out-of-support rows that
MOReL's disagreement catches (cf. Lu et al., 2021, "Revisiting design choices in offline model-based
RL", which compares these uncertainty measures).

``step``: each row draws one elite member uniformly (``generator``) and a sample of its Gaussian
(or its mean, ``deterministic``): x' = x + Δx, r. Its two uncertainty measures, over the elites::

    max_std_norm(x, a)  = max_i ‖σ_i(x, a)‖₂         (MOPO's u(s, a), Yu et al., 2020: the std of all
                                                       D + 1 outputs in data units, as MOPO's code)
    disagreement(x, a) = max_{i,j} ‖μ_i^Δx − μ_j^Δx‖₂  (MOReL's discrepancy, Kidambi et al., 2020:
                                                       next-state means only)

``rollout``: h-step branched rollouts from given start states (MBPO): at each step the policy acts on
``join(x, g)``, the model steps, ``terminal_fn(x, a, x')`` (optional) ends rows (their transition is
recorded with done = 1 and they are not stepped again), and ``reward_fn(x, a, x', g)`` (optional)
replaces the model's reward (e.g. a goal-reaching reward the model cannot know, since it never sees g).

Fitting from the lake: ``transitions_from_sampler`` / ``transitions_from_lake`` give every transition of
a pinned snapshot as ``ModelData`` (x, a, r, x', d, g, task ids), encoded once with the frozen encoder,
with the episode's own task reward r_t (the sampler's ``commanded`` / ``task`` rows). Relabeled goal
rewards are not in it: a goal-conditioned learner passes ``reward_fn`` to ``rollout``. Typical use::

    data = transitions_from_lake(uri, ref, sampler_cfg, frozen_encoder, device)
    model = DynamicsEnsemble(data.x.shape[1], data.actions.shape[1], cfg).to(device)
    report = fit_dynamics(model, data.x, data.actions, data.rewards, data.next_x, cfg)
    replay = ModelReplay(capacity, model.obs_dim, model.action_dim, goal_dim=0 if data.g is None else data.g.shape[1])
    replay.add(rollout(model, x0, g0, policy, horizon, generator, join=encoder.join))  # x0, g0 from real rows
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robot_rl.nets.heads import EnsembleLinear

if TYPE_CHECKING:
    from data_lake.sampler import Sampler, SamplerConfig
    from robot_rl.nets import ObservationEncoder

HOLDOUT_METRICS = ("mse", "nll")
MIN_STD = 1e-3  # floor of the normalization std (the sampler's ``statistics`` floor)


@dataclasses.dataclass(frozen=True)
class DynamicsConfig:
    """The ensemble's size and training; validated on construction."""

    ensemble_size: int = 7  # K members
    elites: int = 5  # E <= K members used by ``step``
    hidden: tuple[int, ...] = (200, 200, 200, 200)
    lr: float = 1e-3
    weight_decay: float = 2.5e-5  # Adam's L2 coefficient on every parameter
    holdout_fraction: float = 0.1
    max_holdout: int = 5000  # MBPO's cap on the holdout size
    batch_size: int = 256  # rows per member per gradient step
    max_epochs_since_update: int = 5
    max_steps: int = 100_000  # gradient steps at most
    holdout_metric: str = "nll"  # holdout loss for early stopping and elites: "nll" or "mse" (MBPO)
    min_logvar: float = -10.0  # initial soft lower bound of the log-variance (normalized units)
    max_logvar: float = 0.5  # initial soft upper bound
    logvar_bound_coef: float = 0.01  # MBPO's penalty on the learned bounds
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {self.ensemble_size}")
        if not 1 <= self.elites <= self.ensemble_size:
            raise ValueError(f"elites must be in [1, ensemble_size={self.ensemble_size}], got {self.elites}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty tuple of sizes >= 1, got {self.hidden}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"lr must be > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}"
            )
        if not 0 < self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.max_holdout < 1 or self.batch_size < 1 or self.max_steps < 1 or self.max_epochs_since_update < 1:
            raise ValueError(
                "max_holdout, batch_size, max_steps and max_epochs_since_update must be >= 1, got "
                f"{self.max_holdout}, {self.batch_size}, {self.max_steps}, {self.max_epochs_since_update}"
            )
        if self.holdout_metric not in HOLDOUT_METRICS:
            raise ValueError(f"holdout_metric must be one of {HOLDOUT_METRICS}, got {self.holdout_metric!r}")
        if not self.min_logvar < self.max_logvar:
            raise ValueError(f"min_logvar must be < max_logvar, got {self.min_logvar} >= {self.max_logvar}")
        if self.logvar_bound_coef < 0:
            raise ValueError(f"logvar_bound_coef must be >= 0, got {self.logvar_bound_coef}")


def check_inputs(x: torch.Tensor, a: torch.Tensor, obs_dim: int, action_dim: int, what: str = "inputs") -> None:
    """Shapes x (B, obs_dim), a (B, action_dim) and finite values, or a ValueError saying what was found."""
    if x.dim() != 2 or x.shape[1] != obs_dim:
        raise ValueError(f"{what}: x must be (B, {obs_dim}) observation features, got {tuple(x.shape)}")
    if a.dim() != 2 or a.shape[1] != action_dim:
        raise ValueError(f"{what}: a must be (B, {action_dim}) actions, got {tuple(a.shape)}")
    if x.shape[0] != a.shape[0]:
        raise ValueError(f"{what}: x has {x.shape[0]} rows, a has {a.shape[0]}")
    for name, t in (("x", x), ("a", a)):
        bad = ~torch.isfinite(t)
        if bad.any():
            row = int(bad.any(1).nonzero()[0])
            raise ValueError(f"{what}: {name} has {int(bad.sum())} non-finite values (NaN/inf), first in row {row}")


@dataclasses.dataclass(frozen=True)
class ModelStep:
    """One model step of B rows."""

    next_x: torch.Tensor  # (B, D)
    reward: torch.Tensor  # (B,)
    max_std_norm: torch.Tensor  # (B,) MOPO's u(x, a) = max_i ‖σ_i‖₂ over the members used
    disagreement: torch.Tensor  # (B,) MOReL's max_{i,j} ‖μ_i − μ_j‖₂ of Δx over the members used
    member: torch.Tensor  # (B,) int64, the member that produced each row


class DynamicsEnsemble(nn.Module):
    """K Gaussian members over y = (Δx, r) given (x, a), batched; normalization statistics as buffers."""

    in_mean: torch.Tensor  # (D + A,) buffers, set by ``set_normalization`` (``fit_dynamics``)
    in_std: torch.Tensor  # (D + A,)
    out_mean: torch.Tensor  # (D + 1,)
    out_std: torch.Tensor  # (D + 1,)
    elite_idx: torch.Tensor  # (E,) int64, the members ``step`` uses
    fitted: torch.Tensor  # () bool, normalization set from data

    def __init__(self, obs_dim: int, action_dim: int, cfg: DynamicsConfig | None = None):
        super().__init__()
        cfg = cfg or DynamicsConfig()
        if obs_dim < 1 or action_dim < 1:
            raise ValueError(f"obs_dim and action_dim must be >= 1, got {obs_dim}, {action_dim}")
        self.cfg, self.obs_dim, self.action_dim = cfg, obs_dim, action_dim
        K, in_dim, out_dim = cfg.ensemble_size, obs_dim + action_dim, obs_dim + 1
        dims = [in_dim, *cfg.hidden]
        with torch.random.fork_rng(devices=[]):  # the members' initialization is a function of the seed
            torch.manual_seed(cfg.seed)
            self.layers = nn.ModuleList(EnsembleLinear(K, i, o) for i, o in itertools.pairwise(dims))
            self.out = EnsembleLinear(K, dims[-1], 2 * out_dim)
        self.max_logvar = nn.Parameter(torch.full((out_dim,), cfg.max_logvar))
        self.min_logvar = nn.Parameter(torch.full((out_dim,), cfg.min_logvar))
        self.register_buffer("in_mean", torch.zeros(in_dim))
        self.register_buffer("in_std", torch.ones(in_dim))
        self.register_buffer("out_mean", torch.zeros(out_dim))
        self.register_buffer("out_std", torch.ones(out_dim))
        self.register_buffer("elite_idx", torch.arange(cfg.elites))
        self.register_buffer("fitted", torch.tensor(False))  # normalization set from data

    # ------------------------------------------------------------ normalization
    @torch.no_grad()
    def set_normalization(self, x: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> None:
        """Mean and std (floored at 1e-3) of the inputs [x, a] and targets y = [Δx, r]."""
        inp = torch.cat([x, a], 1)
        self.in_mean.copy_(inp.mean(0))
        self.in_std.copy_(inp.std(0).clamp_min(MIN_STD))
        self.out_mean.copy_(y.mean(0))
        self.out_std.copy_(y.std(0).clamp_min(MIN_STD))
        self.fitted.fill_(True)

    def normalize_targets(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.out_mean) / self.out_std

    # ------------------------------------------------------------ the members
    def forward_normalized(
        self, x: torch.Tensor, a: torch.Tensor, members: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and bounded log-variance (K, B, D + 1) of normalized y from x (B, D), a (B, A), or from
        per-member inputs x (K, B, D), a (K, B, A) (training: each member its own minibatch)."""
        h = (torch.cat([x, a], -1) - self.in_mean) / self.in_std  # ([K,] B, D + A)
        K = self.cfg.ensemble_size
        if h.dim() == 2:
            h = h.unsqueeze(0).expand(K, -1, -1)  # (K, B, D + A)
        for layer in self.layers:
            h = F.silu(layer(h))  # (K, B, H)
        mean, raw = self.out(h).chunk(2, dim=-1)  # (K, B, D + 1) each
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance (K, B, D + 1) of y = (Δx, r) in data units (not normalized)."""
        check_inputs(x, a, self.obs_dim, self.action_dim, "DynamicsEnsemble")
        if not bool(self.fitted):
            raise RuntimeError("the dynamics model has no normalization statistics yet: call fit_dynamics first")
        mean, logvar = self.forward_normalized(x, a)
        return mean * self.out_std + self.out_mean, logvar + 2.0 * torch.log(self.out_std)

    @torch.no_grad()
    def step(
        self,
        x: torch.Tensor,
        a: torch.Tensor,
        generator: torch.Generator | None = None,
        members: str = "elites",
        deterministic: bool = False,
    ) -> ModelStep:
        """One model step: each row's member drawn uniformly among ``members`` ("elites" or "all"); a
        sample of its Gaussian (its mean if ``deterministic``); the uncertainties over those members."""
        if members not in ("elites", "all"):
            raise ValueError(f"members must be 'elites' or 'all', got {members!r}")
        mean, logvar = self(x, a)  # (K, B, D + 1)
        if members == "elites":
            idx = self.elite_idx
            mean, logvar = mean[idx], logvar[idx]  # (E, B, D + 1)
        else:
            idx = torch.arange(self.cfg.ensemble_size, device=x.device)
        E, B, _ = mean.shape
        std = torch.exp(0.5 * logvar)  # (E, B, D + 1)
        pick = torch.randint(E, (B,), generator=generator, device=x.device)  # (B,)
        rows = torch.arange(B, device=x.device)
        y = mean[pick, rows]  # (B, D + 1)
        if not deterministic:
            eps = torch.randn(y.shape, generator=generator, device=x.device, dtype=y.dtype)
            y = y + std[pick, rows] * eps
        mu_dx = mean[..., :-1].transpose(0, 1)  # (B, E, D)
        return ModelStep(
            next_x=x + y[:, :-1],
            reward=y[:, -1],
            max_std_norm=std.norm(dim=-1).amax(0),  # (B,)
            disagreement=torch.cdist(mu_dx, mu_dx).flatten(1).amax(1),  # (B,)
            member=idx[pick],
        )


# ---------------------------------------------------------------------------- the loss
def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-member Gaussian NLL without constants, mean over rows and outputs: (K, B, O) -> (K,)."""
    return ((mean - target).pow(2) * torch.exp(-logvar) + logvar).mean(dim=(1, 2))


def dynamics_loss(
    model: DynamicsEnsemble, x: torch.Tensor, a: torch.Tensor, target: torch.Tensor, cfg: DynamicsConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ_k NLL_k on each member's minibatch x (K, B, D), a (K, B, A), normalized target (K, B, D + 1),
    plus the penalty on the learned log-variance bounds."""
    mean, logvar = model.forward_normalized(x, a)  # (K, B, D + 1)
    nll = gaussian_nll(mean, logvar, target)  # (K,)
    bounds = cfg.logvar_bound_coef * (model.max_logvar.sum() - model.min_logvar.sum())
    loss = nll.sum() + bounds
    metrics = {
        "dynamics/nll": nll.mean().detach(),
        "dynamics/mse": (mean - target).pow(2).mean().detach(),
        "dynamics/logvar_bound": bounds.detach(),
    }
    return loss, metrics


# ---------------------------------------------------------------------------- fitting
@dataclasses.dataclass(frozen=True)
class FitReport:
    """What ``fit_dynamics`` did; holdout losses per member at the restored (best) parameters."""

    steps: int  # gradient steps
    epochs: int
    train_seconds: float  # time in gradient steps only (holdout evaluations excluded)
    holdout_mse: tuple[float, ...]  # (K,) normalized units
    holdout_nll: tuple[float, ...]  # (K,) nats per output dimension, data units (with the log 2π constant)
    elites: tuple[int, ...]  # (E,) members, best first
    stopped_early: bool

    @property
    def steps_per_s(self) -> float:
        return self.steps / max(self.train_seconds, 1e-9)

    @property
    def elite_nll(self) -> float:
        """Mean holdout NLL (nats per output dimension) of the elites."""
        return float(np.mean([self.holdout_nll[i] for i in self.elites]))


@torch.no_grad()
def holdout_losses(
    model: DynamicsEnsemble, x: torch.Tensor, a: torch.Tensor, y: torch.Tensor, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member MSE (normalized units) and NLL (nats per dimension, data units) on (x, a, y) -> (K,), (K,)."""
    K = model.cfg.ensemble_size
    mse, nll = torch.zeros(K, device=x.device), torch.zeros(K, device=x.device)
    log_std = torch.log(model.out_std)
    for s in range(0, len(x), chunk):
        mean, logvar = model.forward_normalized(x[s : s + chunk], a[s : s + chunk])  # (K, b, O)
        t = model.normalize_targets(y[s : s + chunk])  # (b, O)
        mse += (mean - t).pow(2).mean(-1).sum(-1)
        # NLL in data units: the normalized one plus log(out_std) per dimension
        per = 0.5 * ((mean - t).pow(2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)) + log_std
        nll += per.mean(-1).sum(-1)
    return mse / len(x), nll / len(x)


def holdout_score(
    model: DynamicsEnsemble, x: torch.Tensor, a: torch.Tensor, y: torch.Tensor, metric: str
) -> torch.Tensor:
    mse, nll = holdout_losses(model, x, a, y)
    return mse if metric == "mse" else nll


def as_tensor(v: Any, name: str, device: torch.device) -> torch.Tensor:
    """``v`` as a float32 tensor on ``device``; a ValueError naming the first row with a NaN or inf."""
    t = torch.as_tensor(v, dtype=torch.float32, device=device)
    bad = ~torch.isfinite(t)
    if bad.any():
        row = int(bad.reshape(len(t), -1).any(1).nonzero()[0])
        raise ValueError(f"fit_dynamics: {name} has {int(bad.sum())} non-finite values (NaN/inf), first in row {row}")
    return t


def make_dynamics_optimizer(model: DynamicsEnsemble, cfg: DynamicsConfig) -> torch.optim.Adam:
    """Adam with L2 ``weight_decay`` on the members' layers; the log-variance bounds are not decayed."""
    bounds = [model.max_logvar, model.min_logvar]
    layers = [p for n, p in model.named_parameters() if n.startswith(("layers.", "out."))]
    groups = [{"params": layers, "weight_decay": cfg.weight_decay}, {"params": bounds, "weight_decay": 0.0}]
    return torch.optim.Adam(groups, lr=cfg.lr)


def fit_dynamics(
    model: DynamicsEnsemble,
    x: torch.Tensor | np.ndarray,
    a: torch.Tensor | np.ndarray,
    r: torch.Tensor | np.ndarray,
    x_next: torch.Tensor | np.ndarray,
    cfg: DynamicsConfig | None = None,
    progress: bool = False,
) -> FitReport:
    """Fit every member on (x (N, D), a (N, A), r (N,), x' (N, D)) with holdout early stopping, restore
    each member's best parameters and set ``model.elite_idx``; deterministic for ``cfg.seed``."""
    cfg = cfg or model.cfg
    arch = ("ensemble_size", "hidden", "min_logvar", "max_logvar")
    if any(getattr(cfg, k) != getattr(model.cfg, k) for k in arch):
        raise ValueError(
            f"fit_dynamics: cfg's {arch} = {[getattr(cfg, k) for k in arch]} differ from the model's "
            f"{[getattr(model.cfg, k) for k in arch]}: fit with the config the model was built with"
        )
    device = model.in_mean.device
    x, a, r, x_next = (as_tensor(v, n, device) for v, n in ((x, "x"), (a, "a"), (r, "r"), (x_next, "x_next")))
    check_inputs(x, a, model.obs_dim, model.action_dim, "fit_dynamics")
    if x_next.shape != x.shape or r.shape != (len(x),):
        raise ValueError(
            f"fit_dynamics: x_next must be {tuple(x.shape)} and r ({len(x)},); "
            f"got {tuple(x_next.shape)}, {tuple(r.shape)}"
        )
    N = len(x)
    n_hold = min(int(N * cfg.holdout_fraction), cfg.max_holdout)
    if n_hold < 1 or N - n_hold < 1:
        raise ValueError(
            f"fit_dynamics: {N} rows leave no holdout or no training rows (holdout_fraction={cfg.holdout_fraction})"
        )
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    perm = torch.randperm(N, generator=gen).to(device)
    hold, train = perm[:n_hold], perm[n_hold:]
    y = torch.cat([x_next - x, r[:, None]], 1)  # (N, D + 1)
    model.set_normalization(x[train], a[train], y[train])
    yn = model.normalize_targets(y)
    opt = make_dynamics_optimizer(model, cfg)
    K, n_train = cfg.ensemble_size, len(train)
    per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
    best = holdout_score(model, x[hold], a[hold], y[hold], cfg.holdout_metric).clone()  # (K,)
    best_state = copy.deepcopy(model.state_dict())
    steps = epochs = since = 0
    seconds, stopped = 0.0, False
    while steps < cfg.max_steps:
        t0 = time.perf_counter()
        order = torch.argsort(torch.rand(K, n_train, generator=gen), dim=1).to(device)  # (K, n) per member
        model.train()
        for b in range(per_epoch):
            if steps >= cfg.max_steps:
                break
            idx = train[order[:, b * cfg.batch_size : (b + 1) * cfg.batch_size]]  # (K, b)
            loss, _ = dynamics_loss(model, x[idx], a[idx], yn[idx], cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        seconds += time.perf_counter() - t0
        epochs += 1
        score = holdout_score(model, x[hold], a[hold], y[hold], cfg.holdout_metric)  # (K,)
        if cfg.holdout_metric == "mse":
            better = (best - score) / best.clamp_min(1e-12) > 0.01  # MBPO: 1% relative improvement
        else:
            better = best - score > 0.01  # NLL can be negative: 0.01 nats per dimension
        if better.any():
            state = model.state_dict()
            for k in better.nonzero().flatten().tolist():
                for name, v in state.items():
                    if name.startswith(("layers.", "out.")):
                        best_state[name][k] = v[k]
            best = torch.where(better, score, best)
            since = 0
        else:
            since += 1
        if progress:
            print(f"dynamics epoch {epochs}: step {steps}, holdout {cfg.holdout_metric} {score.mean():.4f}")
        if since >= cfg.max_epochs_since_update:
            stopped = True
            break
    # restore each member's best layers; the shared log-variance bounds keep their final values
    state = model.state_dict()
    model.load_state_dict({k: best_state[k] if k.startswith(("layers.", "out.")) else v for k, v in state.items()})
    model.eval()
    mse, nll = holdout_losses(model, x[hold], a[hold], y[hold])
    score = mse if cfg.holdout_metric == "mse" else nll
    elites = torch.argsort(score)[: cfg.elites]
    model.elite_idx.copy_(elites)
    return FitReport(
        steps=steps,
        epochs=epochs,
        train_seconds=seconds,
        holdout_mse=tuple(mse.tolist()),
        holdout_nll=tuple(nll.tolist()),
        elites=tuple(elites.tolist()),
        stopped_early=stopped,
    )


# ---------------------------------------------------------------------------- rollouts
@dataclasses.dataclass(frozen=True)
class Transitions:
    """Synthetic transitions in feature space (what ``rollout`` returns, ``ModelReplay`` stores and samples)."""

    x: torch.Tensor  # (N, D)
    g: torch.Tensor | None  # (N, G) conditioning features carried unchanged, or None
    actions: torch.Tensor  # (N, A)
    rewards: torch.Tensor  # (N,)
    next_x: torch.Tensor  # (N, D)
    terminals: torch.Tensor  # (N,) float32, 1 ends bootstrapping
    max_std_norm: torch.Tensor  # (N,) MOPO's uncertainty of the step
    disagreement: torch.Tensor  # (N,) MOReL's
    step: torch.Tensor  # (N,) int64, the rollout step h that produced the row (0-based)

    def __len__(self) -> int:
        return int(self.x.shape[0])


def default_join(x: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    """[x, g] (x alone without g); pass ``encoder.join`` to match the encoder's features exactly."""
    return x if g is None else torch.cat([x, g], 1)


@torch.no_grad()
def rollout(
    model: DynamicsEnsemble,
    x0: torch.Tensor,
    g: torch.Tensor | None,
    policy: Callable[[torch.Tensor], torch.Tensor],
    horizon: int,
    generator: torch.Generator | None = None,
    join: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
    terminal_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    reward_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
    deterministic: bool = False,
    members: str = "elites",
) -> Transitions:
    """``horizon``-step branched rollouts from x0 (B, D) with conditioning g (B, G) or None; the policy
    maps ``join(x, g)`` (B, F) to actions (B, A). Rows that ``terminal_fn`` marks done stop (their last
    transition has terminal 1). Returns every transition, step-major (all rows of step 0 first)."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if x0.dim() != 2 or x0.shape[1] != model.obs_dim:
        raise ValueError(f"rollout: x0 must be (B, {model.obs_dim}), got {tuple(x0.shape)}")
    if g is not None and (g.dim() != 2 or g.shape[0] != x0.shape[0]):
        raise ValueError(f"rollout: g must be (B={x0.shape[0]}, G), got {tuple(g.shape)}")
    join = join or default_join
    out: list[Transitions] = []
    x, gg = x0, g
    for h in range(horizon):
        a = policy(join(x, gg))  # (b, A)
        if a.shape != (x.shape[0], model.action_dim):
            raise ValueError(
                f"rollout: the policy returned {tuple(a.shape)}, expected ({x.shape[0]}, {model.action_dim})"
            )
        s = model.step(x, a, generator, members=members, deterministic=deterministic)
        reward = s.reward if reward_fn is None else reward_fn(x, a, s.next_x, gg)
        done = torch.zeros_like(reward, dtype=torch.bool) if terminal_fn is None else terminal_fn(x, a, s.next_x).bool()
        if done.shape != reward.shape:
            raise ValueError(f"rollout: terminal_fn must return ({x.shape[0]},) flags, got {tuple(done.shape)}")
        out.append(
            Transitions(
                x,
                gg,
                a,
                reward,
                s.next_x,
                done.float(),
                s.max_std_norm,
                s.disagreement,
                torch.full_like(s.member, h),
            )
        )
        alive = ~done
        if not alive.any():
            break
        x, gg = s.next_x[alive], None if gg is None else gg[alive]
    return concat_transitions(out)


def concat_transitions(parts: list[Transitions]) -> Transitions:
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(Transitions):
        vals = [getattr(p, f.name) for p in parts]
        fields[f.name] = None if vals[0] is None else torch.cat(vals)
    return Transitions(**fields)


class ModelReplay:
    """A ring buffer of synthetic transitions on one device; the oldest rows are overwritten when full.

    ``add(t: Transitions)``, ``sample(n, generator) -> Transitions`` (uniform with replacement over the
    stored rows), ``state_dict`` / ``load_state_dict`` for exact resume.
    """

    KEYS = ("x", "g", "actions", "rewards", "next_x", "terminals", "max_std_norm", "disagreement", "step")

    def __init__(
        self, capacity: int, obs_dim: int, action_dim: int, goal_dim: int = 0, device: str | torch.device = "cpu"
    ):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.obs_dim, self.action_dim, self.goal_dim = capacity, obs_dim, action_dim, goal_dim
        self.device = torch.device(device)
        shapes = {
            "x": (obs_dim,),
            "g": (goal_dim,),
            "actions": (action_dim,),
            "rewards": (),
            "next_x": (obs_dim,),
            "terminals": (),
            "max_std_norm": (),
            "disagreement": (),
            "step": (),
        }
        self.data = {
            k: torch.zeros((capacity, *s), dtype=torch.int64 if k == "step" else torch.float32, device=self.device)
            for k, s in shapes.items()
        }
        self.ptr = self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, t: Transitions) -> None:
        n = len(t)
        if (t.g is None) != (self.goal_dim == 0) or (t.g is not None and t.g.shape[1] != self.goal_dim):
            got = None if t.g is None else tuple(t.g.shape)
            raise ValueError(f"ModelReplay holds g of dim {self.goal_dim} (0: none); the transitions have g {got}")
        if t.x.shape[1:] != (self.obs_dim,) or t.actions.shape[1:] != (self.action_dim,):
            raise ValueError(
                f"ModelReplay holds x (·, {self.obs_dim}), a (·, {self.action_dim}); "
                f"got {tuple(t.x.shape)}, {tuple(t.actions.shape)}"
            )
        if n == 0:
            return
        if n > self.capacity:  # only the newest rows fit
            newest: dict[str, Any] = {k: getattr(t, k) for k in self.KEYS}
            cut: dict[str, Any] = {k: None if v is None else v[n - self.capacity :] for k, v in newest.items()}
            t = Transitions(**cut)
            n = self.capacity
        idx = (self.ptr + torch.arange(n, device=self.device)) % self.capacity
        for k in self.KEYS:
            v = getattr(t, k)
            if v is not None:
                self.data[k][idx] = v.to(self.device, self.data[k].dtype)
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Transitions:
        if self.size == 0:
            raise ValueError("ModelReplay is empty: add model rollouts before sampling")
        idx = torch.randint(self.size, (n,), generator=generator, device=self.device)
        rows: dict[str, Any] = {k: self.data[k][idx] for k in self.KEYS}
        if self.goal_dim == 0:
            rows["g"] = None
        return Transitions(**rows)

    def state_dict(self) -> dict[str, Any]:
        return {
            "data": {k: v.clone() for k, v in self.data.items()},
            "ptr": self.ptr,
            "size": self.size,
            "capacity": self.capacity,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"ModelReplay state has capacity {state['capacity']}, this buffer {self.capacity}")
        for k, v in state["data"].items():
            if v.shape != self.data[k].shape:
                raise ValueError(
                    f"ModelReplay state {k!r} has shape {tuple(v.shape)}, expected {tuple(self.data[k].shape)}"
                )
            self.data[k].copy_(v)
        self.ptr, self.size = int(state["ptr"]), int(state["size"])


# ---------------------------------------------------------------------------- data from the lake
@dataclasses.dataclass(frozen=True)
class ModelData:
    """Every transition of a pinned snapshot in a frozen encoder's feature space (rows in pool order)."""

    x: torch.Tensor  # (N, D) observation features of s_t
    actions: torch.Tensor  # (N, A)
    rewards: torch.Tensor  # (N,) the episode's own (task) reward, by the sampler's rules
    next_x: torch.Tensor  # (N, D) of s_{t+1}
    terminals: torch.Tensor  # (N,) float32
    g: torch.Tensor | None  # (N, G) goal/task features (commanded goal where stored, else blank), or None
    task_ids: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.x.shape[0])


@torch.no_grad()
def transitions_from_sampler(
    sampler: Sampler, encoder: ObservationEncoder, device: str | torch.device = "cpu", batch_size: int = 1024
) -> ModelData:
    """Encode every transition of ``sampler``'s pool (no relabeling, no augmentation) with ``encoder``
    (used frozen: eval mode, no gradients). Rows whose episode stores a commanded goal carry it as g
    (the sampler's ``commanded`` rows), the others a blank goal (its ``task`` rows)."""
    from data_lake.batch import COMMANDED, TASK
    from data_lake.sampler import Rows, gather

    if encoder.early:
        raise ValueError(
            "the dynamics model needs observation features independent of the goal; this encoder fuses goal "
            "images early (goal_fusion='early'): use goal_fusion='late'"
        )
    pool, rc = sampler.pool, sampler.cfg.relabel
    was_training = encoder.training
    encoder.eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("x", "a", "r", "nx", "d", "g", "k")}
    for s in range(0, len(pool.valid), batch_size):
        t = pool.valid[s : s + batch_size]
        ep = pool.ep_of[t]
        source = np.where(pool.has_goal[ep], COMMANDED, TASK).astype(np.int64)
        reward = pool.reward[t].astype(np.float32)
        terminal = pool.is_terminal[t + 1].astype(np.float32)
        if rc.success_terminal:
            terminal = np.maximum(terminal, (reward > 0).astype(np.float32))
        rows = Rows(
            t, np.full(len(t), -1, np.int64), source, reward, terminal, pool.mc_task[t], pool.task_of[ep].copy()
        )
        batch = gather(pool, rows, goals=rc.uses_goals).to(device)
        tids = batch.task_ids if encoder.task_embedding is not None else None
        g = encoder.goal_features(batch.goals, tids)  # (b, G) or None
        f, nf = encoder.observation_features([batch.observations, batch.next_observations], batch.goals)
        for k, v in (
            ("x", f),
            ("a", batch.actions),
            ("r", batch.rewards),
            ("nx", nf),
            ("d", batch.terminals),
            ("g", g),
            ("k", batch.task_ids),
        ):
            if v is not None:
                parts[k].append(v)
    encoder.train(was_training)
    return ModelData(
        x=torch.cat(parts["x"]),
        actions=torch.cat(parts["a"]),
        rewards=torch.cat(parts["r"]),
        next_x=torch.cat(parts["nx"]),
        terminals=torch.cat(parts["d"]),
        g=torch.cat(parts["g"]) if parts["g"] else None,
        task_ids=torch.cat(parts["k"]),
    )


def transitions_from_lake(
    lake_uri: str,
    ref: str,
    sampler_cfg: SamplerConfig,
    encoder: ObservationEncoder,
    device: str | torch.device = "cpu",
    batch_size: int = 1024,
) -> ModelData:
    """``transitions_from_sampler`` on snapshot ``ref`` of the lake at ``lake_uri`` (``sampler_cfg`` picks
    the cameras, state and episodes as for training; its relabeling mix is not used)."""
    from data_lake import Lake
    from data_lake.sampler import Sampler

    view = Lake.open(lake_uri).checkout(ref)
    sampler = Sampler(view, sampler_cfg, device="cpu", progress=False)
    try:
        return transitions_from_sampler(sampler, encoder, device, batch_size)
    finally:
        sampler.close()
