"""Plumbing every algorithm shares: the common config, encode-once, the Policy, Polyak updates, state.

Two interfaces: :class:`Algorithm` (a Protocol: what pretraining, finetuning, checkpoints and
diagnostics use of a learner) and :class:`TrainedPolicy` (what evaluation and deployment load: the
acting networks, config and observation spec; no critics to learn with, targets or optimizers).

An algorithm file (``bc.py``, ``iql.py``, ``cql.py``) subclasses :class:`BaseAlgorithm` and supplies
``build_networks`` (online modules, targets named ``target_<name>``), ``build_optimizers``,
``update`` and ``build_actor`` (the actor head alone, so ``build_policy`` can build the acting
networks without the rest: critic-only algorithms override ``build_policy``); its losses are
pure functions ``(enc, nets, cfg[, rng]) -> (loss, metrics)`` where ``enc`` is an ``Encoded``
batch (the Batch plus its embeddings, computed once per update) and ``nets`` the algorithm's
``Nets`` (an ``nn.ModuleDict``: ``nets.critic``, ``nets.target_critic``, ...). Losses that sample take an
explicit ``torch.Generator`` so they stay deterministic functions of inputs.

Encode once (DrQ-style sharing): each update encodes ``s`` once with gradients (the critic loss
trains the encoder; actors read ``features.detach()``) and ``s'`` once without (targets and
``π(·|s')`` only read it). Goal images and task embeddings are encoded once per row and shared by
``s`` and ``s'``. Deviation from DrQ: there is no target *encoder*; target heads read the online
encoder's (detached) ``s'`` embedding, so each image costs one encoder pass per update.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from data_lake.batch import Batch, Observation
from robot_rl.nets import Critic, EncoderConfig, ObservationEncoder, ObservationSpec, ValueNetwork


@dataclasses.dataclass(frozen=True)
class AlgoConfig:
    """Fields every algorithm has; algorithm configs subclass it and call ``super().__post_init__()``."""

    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    hidden: tuple[int, ...] = (256, 256)  # MLP sizes of critics, values and actors
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005  # Polyak rate of target networks
    layer_norm: bool = False  # LayerNorm in the hidden layers of critics and values (OGBench's setting)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty tuple of sizes >= 1, got {self.hidden}")
        if self.actor_lr <= 0 or self.critic_lr <= 0:
            raise ValueError(f"learning rates must be > 0, got actor_lr={self.actor_lr}, critic_lr={self.critic_lr}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A Batch with its embeddings: what every loss reads."""

    batch: Batch
    features: torch.Tensor  # (B, F) of s, with gradients to the encoder
    next_features: torch.Tensor | None  # (B, F) of s', no gradients; None when the loss needs no s'

    def require_next(self) -> torch.Tensor:
        """``next_features`` for a loss that reads s' (the batch encoded with ``next_observations=True``)."""
        if self.next_features is None:
            raise ValueError("this loss reads s': encode the batch with next_observations=True")
        return self.next_features


def encode(encoder: ObservationEncoder, batch: Batch, next_observations: bool = True) -> Encoded:
    """Encode s (with grad) and s' (without) once; the goal/task part is computed once and shared."""
    g = encoder.goal_features(batch.goals, batch.task_ids)  # (B, D_g) or None
    (f,) = encoder.observation_features([batch.observations], batch.goals)  # (B, D_o)
    features = encoder.join(f, g)  # (B, F)
    next_features = None
    if next_observations:
        with torch.no_grad():
            (nf,) = encoder.observation_features([batch.next_observations], batch.goals)
            next_features = encoder.join(nf, None if g is None else g.detach())  # (B, F)
    return Encoded(batch, features, next_features)


@torch.no_grad()
def encode_goals(encoder: ObservationEncoder, batch: Batch, goals: Observation) -> torch.Tensor:
    """Features (B, F) of the batch's observations with other goals (``Batch.actor_goals``), no gradients."""
    (f,) = encoder.observation_features([batch.observations], goals)  # (B, D_o)
    return encoder.join(f, encoder.goal_features(goals, batch.task_ids))  # (B, F)


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """θ̄ ← (1 − τ)·θ̄ + τ·θ for every parameter (one fused foreach op)."""
    t: list[torch.Tensor] = list(target.parameters())
    o: list[torch.Tensor] = list(online.parameters())
    if len(t) != len(o):
        raise ValueError(f"target has {len(t)} parameters, online {len(o)}")
    torch._foreach_lerp_(t, o, tau)


def make_optimizer(modules: list[nn.Module], lr: float) -> torch.optim.Optimizer:
    """Adam over the modules' parameters; the fused CUDA kernel when they live on a GPU."""
    params = [p for m in modules for p in m.parameters()]
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


class Scalar(nn.Module):
    """One learnable scalar (log α, log α′) as a module, so state dicts and optimizers treat it like a net."""

    def __init__(self, value: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value)))

    def forward(self) -> torch.Tensor:
        return self.value


class Nets(nn.ModuleDict):
    """An algorithm's networks by name (``BaseAlgorithm.nets``, the ``nets`` of every loss).

    The annotations give the types of the names algorithms share to the type checker; they create no
    attributes (``nn.Module.__getattr__`` finds the modules), and an algorithm builds only those it uses.
    """

    encoder: ObservationEncoder
    critic: Critic
    target_critic: Critic
    actor: nn.Module  # called on features (B, F), returns an action distribution (``mode``, ``sample``)
    target_actor: nn.Module
    value: ValueNetwork
    log_alpha: Scalar
    log_alpha_prime: Scalar


class Policy(nn.Module):
    """What evaluation and deployment need: the encoder and the actor (no critics, no optimizers)."""

    def __init__(self, encoder: ObservationEncoder, actor: nn.Module):
        super().__init__()
        self.encoder, self.actor = encoder, actor

    @torch.no_grad()
    def forward(
        self,
        observation: Observation,
        goal: Observation | None = None,
        task_ids: torch.Tensor | None = None,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        (features,) = self.encoder([observation], goal, task_ids)  # (B, F), encoded once
        return self.act_on(features, deterministic, generator)

    def act_on(self, features: torch.Tensor, deterministic: bool, generator: torch.Generator | None) -> torch.Tensor:
        """Actions (B, A) from encoded observations (B, F): the actor's mode or a sample."""
        dist = self.actor(features)
        return dist.mode() if deterministic else dist.sample(generator=generator)[0]  # (B, A)


@dataclasses.dataclass(frozen=True)
class TrainedPolicy:
    """A policy as evaluation and deployment load it (``checkpoint.load_policy``): the acting networks
    (``policy``: encoder and actor, or encoder and the critic a CEM policy maximizes; the encoder
    carries the spec's normalization) with the algorithm's name, config and observation spec."""

    name: str
    cfg: AlgoConfig
    spec: ObservationSpec
    policy: Policy
    step: int  # updates the networks had when saved
    device: torch.device

    def act(
        self,
        observation: Observation,
        goal: Observation | None = None,
        task_ids: torch.Tensor | None = None,
        deterministic: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Actions (B, A) in [-1, 1] for a device observation (float images (B, 3, H, W))."""
        return self.policy(observation, goal, task_ids, deterministic, generator)


class Algorithm(Protocol):
    """What the loops use of an algorithm (pretrain, finetune, checkpoints, diagnostics): every class
    of ``ALGOS`` is one (through :class:`BaseAlgorithm`)."""

    nets: Nets  # every network by name, targets (``target_*``) and auxiliary heads (``aux_*``) included
    optimizers: dict[str, torch.optim.Optimizer]
    rng: torch.Generator  # the algorithm's own sampling (losses, stochastic acting)
    step: int
    auxiliary: Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]] | None

    @property
    def name(self) -> str: ...

    @property
    def cfg(self) -> AlgoConfig: ...

    @property
    def spec(self) -> ObservationSpec: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def policy(self) -> Policy:
        """The acting networks (shared with ``nets``, not copies)."""
        ...

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step on a device Batch; returns detached metrics."""
        ...

    def act(
        self,
        observation: Observation,
        goal: Observation | None = None,
        task_ids: torch.Tensor | None = None,
        deterministic: bool = True,
    ) -> torch.Tensor:
        """Actions (B, A) in [-1, 1], sampling from ``rng``."""
        ...

    def q_estimate(self, batch: Batch) -> torch.Tensor | None:
        """Q of the batch's own actions (B,); None without a critic."""
        ...

    def attach_auxiliary(self, modules: dict[str, nn.Module]) -> None:
        """Add ``aux_*`` heads trained with the encoder (finetuning's ξ·L_g)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizers, step and RNG."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Initialize networks from ``seed`` without touching torch's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class BaseAlgorithm(abc.ABC):
    """Build from (config, spec); ``update(batch) -> metrics``; ``act``; ``state_dict`` of everything.

    ``build_policy(cfg, spec)`` builds the acting networks alone (no algorithm, no critics to learn
    with, no targets, no optimizers) for ``checkpoint.load_policy`` to fill.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[AlgoConfig]]

    def __init__(self, cfg: AlgoConfig, spec: ObservationSpec, device: str | torch.device = "cpu"):
        self.check_config(cfg)
        self.cfg, self.spec, self.device = cfg, spec, torch.device(device)
        with seeded(cfg.seed):
            self.nets = Nets(self.build_networks()).to(self.device)
        for name, module in self.nets.items():
            if name.startswith("target_"):
                module.requires_grad_(False)
        self.optimizers = self.build_optimizers()
        self.rng = torch.Generator(self.device).manual_seed(cfg.seed)
        self.step = 0
        self.auxiliary: Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None

    @classmethod
    def check_config(cls, cfg: AlgoConfig) -> None:
        if not isinstance(cfg, cls.config_class):
            raise TypeError(f"{cls.__name__} needs a {cls.config_class.__name__}, got {type(cfg).__name__}")

    # ------------------------------------------------------------ what a subclass supplies
    @classmethod
    def build_actor(cls, cfg: Any, spec: ObservationSpec, feature_dim: int) -> nn.Module:
        """The actor head on ``feature_dim`` encoder features (``build_networks`` builds it with this too)."""
        raise NotImplementedError(f"{cls.__name__} has no actor; it overrides build_policy")

    @classmethod
    def build_policy(cls, cfg: AlgoConfig, spec: ObservationSpec) -> Policy:
        """The acting networks alone, initialized from ``cfg.seed``: the encoder and the actor."""
        cls.check_config(cfg)
        with seeded(cfg.seed):
            encoder = ObservationEncoder(spec, cfg.encoder)
            return Policy(encoder, cls.build_actor(cfg, spec, encoder.out_dim))

    @abc.abstractmethod
    def build_networks(self) -> dict[str, nn.Module]:
        """Online modules by name; targets are named ``target_<name>`` (frozen, Polyak-updated)."""

    @abc.abstractmethod
    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers by name over ``self.nets``."""

    @abc.abstractmethod
    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step on ``batch`` (a device Batch); returns detached metrics."""

    def optimize(self, name: str, loss: torch.Tensor) -> None:
        """One step of optimizer ``name`` on ``loss`` (zero grads, backward, step)."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # ------------------------------------------------------------ auxiliary losses (finetuning)
    def with_auxiliary(self, loss: torch.Tensor, metrics: dict[str, torch.Tensor]) -> torch.Tensor:
        """``loss + aux`` where ``aux`` is ``self.auxiliary()`` (already weighted, e.g. ξ·L_g), else ``loss``.

        Every update passes the loss whose optimizer trains the encoder through this, so an auxiliary
        objective shares the encoder and one backward pass with the task loss (L = L_task + ξ·L_g).
        """
        if self.auxiliary is None:
            return loss
        aux, aux_metrics = self.auxiliary()
        metrics.update(aux_metrics)
        return loss + aux

    def encoder_optimizer(self) -> str:
        """The name of the optimizer that holds the encoder's parameters (a parameter-free state-only
        encoder: the critic's, else the first)."""
        first = next(self.nets.encoder.parameters(), None)
        if first is None:
            return "critic" if "critic" in self.optimizers else next(iter(self.optimizers))
        for name, opt in self.optimizers.items():
            if any(p is first for g in opt.param_groups for p in g["params"]):
                return name
        raise RuntimeError(f"no optimizer of {self.name} holds the encoder")

    def attach_auxiliary(self, modules: dict[str, nn.Module]) -> None:
        """Add ``modules`` (named ``aux_*``; ``aux_target_*`` frozen) to ``nets`` (so checkpoints hold them)
        and their trainable parameters, as a new group, to the optimizer that trains the encoder."""
        params = []
        for name, module in modules.items():
            if not name.startswith("aux_"):
                raise ValueError(f"auxiliary modules are named aux_*, got {name!r}")
            self.nets[name] = module.to(self.device)
            if name.startswith("aux_target_"):
                module.requires_grad_(False)
            else:
                params += [p for p in module.parameters() if p.requires_grad]
        if params:
            opt = self.optimizers[self.encoder_optimizer()]
            opt.add_param_group({"params": params})

    # ------------------------------------------------------------ shared
    def encoder(self) -> ObservationEncoder:
        return ObservationEncoder(self.spec, self.cfg.encoder)

    def encoder_and_critic(self, num_critics: int) -> dict[str, nn.Module]:
        """``encoder``, a ``critic`` ensemble of ``num_critics`` heads on its features and ``target_critic``,
        built in this order (so every algorithm initializes them alike); algorithms add their actors."""
        encoder = self.encoder()
        critic = Critic(encoder.out_dim, self.spec.action_dim, self.cfg.hidden, num_critics, self.cfg.layer_norm)
        return {"encoder": encoder, "critic": critic, "target_critic": self.target(critic)}

    @staticmethod
    def feature_dim(nets: dict[str, nn.Module]) -> int:
        """The feature size F of ``nets["encoder"]`` (an ObservationEncoder) while ``build_networks`` builds."""
        encoder = nets["encoder"]
        if not isinstance(encoder, ObservationEncoder):
            raise TypeError(f"nets['encoder'] is a {type(encoder).__name__}, not an ObservationEncoder")
        return encoder.out_dim

    @staticmethod
    def target(module: nn.Module) -> nn.Module:
        return copy.deepcopy(module)

    @property
    def policy(self) -> Policy:
        return Policy(self.nets.encoder, self.nets.actor)

    def act(
        self,
        observation: Observation,
        goal: Observation | None = None,
        task_ids: torch.Tensor | None = None,
        deterministic: bool = True,
    ) -> torch.Tensor:
        """Actions (B, A) in [-1, 1] for a device observation (float images (B, 3, H, W))."""
        return self.policy(observation, goal, task_ids, deterministic, self.rng)

    @torch.no_grad()
    def q_estimate(self, batch: Batch) -> torch.Tensor | None:
        """Q(s, a[, g]) of the batch's own actions (B,): the minimum over the critic ensemble, on the scale
        the algorithm learns (``q_scale``); None for an algorithm without a critic (BC). For calibration
        plots (``robot_rl.diagnostics``), not for training."""
        if "critic" not in self.nets:
            return None
        enc = encode(self.nets.encoder, batch, next_observations=False)
        return self.q_scale(self.nets.critic(enc.features, batch.actions)).min(0).values  # (B,)

    def q_scale(self, out: torch.Tensor) -> torch.Tensor:
        """The critic's raw output -> Q (identity; QT-Opt's sigmoid critics override it)."""
        return out

    @staticmethod
    def metrics(values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Detached scalars -> floats with one device sync."""
        return dict(zip(values, torch.stack([v.detach().float() for v in values.values()]).tolist(), strict=True))

    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": self.nets.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "step": self.step,
            "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.load_state_dict(state["nets"])
        if set(state["optimizers"]) != set(self.optimizers):
            raise KeyError(f"optimizers {sorted(state['optimizers'])} in the state, {sorted(self.optimizers)} here")
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        self.step = int(state["step"])
        self.rng.set_state(state["rng"])
