"""Observation encoders: images (+ state) (+ goal) (+ task id) -> one flat feature vector.

Two image trunks, each ending in a projection to ``feature_dim``:

    conv      DrQ (Kostrikov et al., 2020): 4 conv 3x3, 32 channels, the first with stride 2, ReLU,
              flatten, Linear -> LayerNorm -> tanh. Input is ``x - 0.5`` for x in [0, 1].
              Sized for the image: by default (``conv_strides=()``) the first layer has stride 2
              and one more layer gets stride 2 for every doubling of the image size above 32
              pixels, so 32x32 keeps DrQ's (2, 1, 1, 1) (a 9x9 map) and 64x64 gets (2, 2, 1, 1)
              (11x11 instead of 25x25: 2.7x faster updates at B=256, ``benchmarks/learner.py``).
              ``conv_strides`` sets every layer's stride explicitly.
    resnet18  torchvision's ResNet-18 with ``weights=None`` (nothing is downloaded) and every
              BatchNorm replaced by GroupNorm (batch statistics do not mix with RL targets);
              the 512-d pooled output goes through the same Linear -> LayerNorm -> tanh.

Conditioning (what ``ObservationEncoder`` concatenates, in this order)::

    [camera features (one per camera, sorted names)] [state or MLP(state)]
    [late fusion: goal camera features] [goal state] [task embedding]

Goal deltas (``goal_delta``): the features also carry goal − observation, φ(g) − φ(s) for each
camera seen both ways (late fusion: one trunk, one embedding space) and goal state − the observed
scene vector. What must change to reach the goal is then an input rather than something the first
layer has to learn to compute; on multi-task tabletop data it is what lets a goal-conditioned
policy tell a push goal from a reach goal (``docs/learning.md``).

Goal fusion: ``early`` stacks each goal image's channels with its camera's image (a 6-channel
trunk input, so the goal camera set must equal the observation camera set); ``late`` encodes the
goal images with the same trunks and concatenates the embeddings. Cameras share one trunk
(``share_cameras``) or get one each.

Normalization: the spec may carry per-dimension statistics of the proprioceptive state and of the
goal state (``state_mean``/``state_std``, ``goal_state_mean``/``goal_state_std``, measured on the
training data by ``data_lake.sampler.Sampler.statistics``); the encoder then feeds
``(x − mean) / std`` (clipped to ±``NORM_CLIP``) instead of raw metres. They live in the spec, so
every checkpoint and deployed policy normalizes as it was trained. Without them, positions that
differ by centimetres reach the first layer as differences of 0.01: goal-conditioned learners from
states then fail on the tabletop (``docs/learning.md``).

Encode once: ``ObservationEncoder.forward`` takes several observations that share one goal and
task id (typically ``s`` and ``s'``) and runs every trunk once on all their images (concatenated
along the batch), encoding each goal image once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torchvision
from torch import nn

from data_lake.batch import Batch, Observation

if TYPE_CHECKING:
    from data_lake.sampler import Sampler


class SpecError(ValueError):
    """An observation that does not match the spec the networks were built for."""


@dataclasses.dataclass(frozen=True)
class ObservationSpec:
    """What the networks see: cameras and their sizes, state, goal, tasks, action size.

    ``image_sizes`` (H, W) per camera in ``cameras``; ``goal_cameras`` empty and ``goal_state_dim``
    0 when there are no goals (``has_goal`` False); ``num_tasks`` 0 disables task conditioning.
    The observation state is the proprioceptive ``state`` followed by the last ``scene_state_dim``
    numbers, the scene vector (the env's ``scene`` observation; 0: not observed), so
    ``state_dim − scene_state_dim`` is the proprioceptive part.
    """

    action_dim: int
    cameras: tuple[str, ...] = ()
    image_sizes: tuple[tuple[int, int], ...] = ()
    state_dim: int = 0
    has_goal: bool = False
    goal_cameras: tuple[str, ...] = ()
    goal_image_sizes: tuple[tuple[int, int], ...] = ()
    goal_state_dim: int = 0
    num_tasks: int = 0
    scene_state_dim: int = 0
    state_mean: tuple[float, ...] = ()  # () : the state enters unnormalized
    state_std: tuple[float, ...] = ()
    goal_state_mean: tuple[float, ...] = ()
    goal_state_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.action_dim < 1:
            raise SpecError(f"action_dim must be >= 1, got {self.action_dim}")
        if len(self.image_sizes) != len(self.cameras) or len(self.goal_image_sizes) != len(self.goal_cameras):
            raise SpecError(f"one (H, W) per camera: cameras {self.cameras} sizes {self.image_sizes}")
        if not self.cameras and self.state_dim == 0:
            raise SpecError("an observation needs at least one camera or a state (state_dim > 0)")
        if not self.has_goal and (self.goal_cameras or self.goal_state_dim):
            raise SpecError("goal cameras / goal state given but has_goal is False")
        if not 0 <= self.scene_state_dim <= self.state_dim:
            raise SpecError(f"scene_state_dim must be in [0, state_dim={self.state_dim}], got {self.scene_state_dim}")
        for name, dim in (("state", self.state_dim), ("goal_state", self.goal_state_dim)):
            mean, std = getattr(self, f"{name}_mean"), getattr(self, f"{name}_std")
            if (mean or std) and not (len(mean) == len(std) == dim):
                raise SpecError(
                    f"{name}_mean and {name}_std need {dim} values each ({name} dim), got {len(mean)} and {len(std)}"
                )
            if any(not s > 0 for s in std):
                raise SpecError(f"{name}_std must be > 0 everywhere, got {std}")

    @classmethod
    def from_sampler(
        cls, sampler: Sampler, num_tasks: int = 0, statistics: dict[str, tuple[float, ...]] | None = None
    ) -> ObservationSpec:
        """The spec of a sampler's batches (``from_batch``), its scene part, and normalization ``statistics``
        (``sampler.statistics()``, or those shared by every rank; None: no normalization)."""
        spec = cls.from_batch(sampler.example_batch(), num_tasks)
        spec = dataclasses.replace(spec, scene_state_dim=sampler.scene_state_dim)
        return spec if statistics is None else spec.with_statistics(statistics)

    def with_statistics(self, stats: dict[str, tuple[float, ...]]) -> ObservationSpec:
        """This spec normalizing with ``stats`` (``Sampler.statistics()``: keys ``state_mean``, ``state_std``,
        ``goal_state_mean``, ``goal_state_std``); a part the spec does not have is left out."""
        s, g = bool(self.state_dim), bool(self.goal_state_dim)
        return dataclasses.replace(
            self,
            state_mean=tuple(stats["state_mean"]) if s else self.state_mean,
            state_std=tuple(stats["state_std"]) if s else self.state_std,
            goal_state_mean=tuple(stats["goal_state_mean"]) if g else self.goal_state_mean,
            goal_state_std=tuple(stats["goal_state_std"]) if g else self.goal_state_std,
        )

    @classmethod
    def from_batch(cls, batch: Batch, num_tasks: int = 0) -> ObservationSpec:
        """The spec of a (device or host) batch; ``num_tasks`` = ``len(sampler.tasks)`` to condition on tasks."""

        def sizes(images: dict[str, torch.Tensor]) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
            names = tuple(sorted(images))
            # host: (B, H, W, 3) uint8; device: (B, 3, H, W) float
            hw = [
                tuple(images[c].shape[1:3] if images[c].dtype == torch.uint8 else images[c].shape[2:4]) for c in names
            ]
            return names, tuple((int(h), int(w)) for h, w in hw)

        cams, cam_sizes = sizes(batch.observations.images)
        g = batch.goals
        gcams, gsizes = sizes(g.images) if g is not None else ((), ())
        state = batch.observations.state
        return cls(
            action_dim=int(batch.actions.shape[1]),
            cameras=cams,
            image_sizes=cam_sizes,
            state_dim=0 if state is None else int(state.shape[1]),
            has_goal=g is not None,
            goal_cameras=gcams,
            goal_image_sizes=gsizes,
            goal_state_dim=0 if g is None or g.state is None else int(g.state.shape[1]),
            num_tasks=num_tasks,
        )

    @property
    def proprio_dim(self) -> int:
        """Size of the proprioceptive part of the observation state."""
        return self.state_dim - self.scene_state_dim

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ObservationSpec:
        tup = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) for k, v in d.items() if isinstance(v, list)}
        return cls(**{**d, **tup})


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    trunk: str = "conv"  # "conv" (DrQ) | "resnet18" (GroupNorm)
    feature_dim: int = 50  # per-camera embedding size
    conv_channels: int = 32
    conv_layers: int = 4
    conv_strides: tuple[int, ...] = ()  # one per conv layer; (): sized for the image (see conv_strides_for)
    group_norm_groups: int = 8  # resnet18 only
    share_cameras: bool = True  # one trunk for every camera (and goal camera)
    goal_fusion: str = "late"  # "early" (6-channel input) | "late" (shared trunk, concatenated embeddings)
    state_hidden: int = 0  # 0: concatenate the state directly; > 0: Linear -> ReLU to this size first
    task_embedding_dim: int = 16  # used when the spec has num_tasks > 0
    goal_delta: bool = False  # also feed goal − observation: per camera φ(g) − φ(s) (late fusion), goal − scene state

    def __post_init__(self) -> None:
        if self.trunk not in ("conv", "resnet18"):
            raise ValueError(f"trunk must be 'conv' or 'resnet18', got {self.trunk!r}")
        if self.goal_fusion not in ("early", "late"):
            raise ValueError(f"goal_fusion must be 'early' or 'late', got {self.goal_fusion!r}")
        if self.feature_dim < 1 or self.conv_channels < 1 or self.conv_layers < 1:
            raise ValueError(
                f"feature_dim, conv_channels, conv_layers must be >= 1, got "
                f"{self.feature_dim}, {self.conv_channels}, {self.conv_layers}"
            )
        if self.conv_strides and (len(self.conv_strides) != self.conv_layers or min(self.conv_strides) < 1):
            raise ValueError(
                f"conv_strides needs one stride >= 1 per conv layer ({self.conv_layers}), got {self.conv_strides}"
            )
        if self.state_hidden < 0 or self.task_embedding_dim < 0 or self.group_norm_groups < 1:
            raise ValueError("state_hidden and task_embedding_dim must be >= 0, group_norm_groups >= 1")


NORM_CLIP = 10.0
"""Normalized state values are clipped to ±NORM_CLIP (a state far outside the data stays finite)."""


class Normalizer(nn.Module):
    """``clip((x − mean) / std, ±NORM_CLIP)`` with the spec's statistics; the identity without them."""

    mean: torch.Tensor  # (D,) buffers
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.active = bool(mean)
        # non-persistent: the statistics live in the spec (JSON), the state dict stays as it was
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        return ((x - self.mean) / self.std).clamp(-NORM_CLIP, NORM_CLIP)  # (B, D)


def conv_strides_for(size: tuple[int, int], layers: int) -> tuple[int, ...]:
    """Default strides: 2 for the first layer, and 2 for one more layer per doubling above 32 pixels
    (32 -> (2, 1, 1, 1), 64 -> (2, 2, 1, 1), 128 -> (2, 2, 2, 1)); never more stride-2 layers than layers."""
    doublings = max(0, math.floor(math.log2(max(min(size), 1) / 32)))
    n2 = min(layers, 1 + doublings)
    return (2,) * n2 + (1,) * (layers - n2)


class ConvTrunk(nn.Module):
    """DrQ encoder: (B, C, H, W) in [0, 1] -> (B, feature_dim) in [-1, 1]."""

    def __init__(self, in_channels: int, size: tuple[int, int], cfg: EncoderConfig):
        super().__init__()
        ch = cfg.conv_channels
        strides = cfg.conv_strides or conv_strides_for(size, cfg.conv_layers)
        layers: list[nn.Module] = []
        h, w = size
        for i, stride in enumerate(strides):
            layers += [nn.Conv2d(in_channels if i == 0 else ch, ch, 3, stride=stride), nn.ReLU()]
            h, w = (h - 3) // stride + 1, (w - 3) // stride + 1
        self.convs = nn.Sequential(*layers)
        if h < 1 or w < 1:
            raise SpecError(f"image size {size} is too small for {cfg.conv_layers} conv layers")
        self.projection = nn.Sequential(
            nn.Linear(ch * h * w, cfg.feature_dim), nn.LayerNorm(cfg.feature_dim), nn.Tanh()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x - 0.5)  # (B, ch, h, w)
        return self.projection(h.flatten(1))  # (B, feature_dim)


class ResNet18Trunk(nn.Module):
    """ResNet-18 (GroupNorm, no pretrained weights): (B, C, H, W) in [0, 1] -> (B, feature_dim)."""

    def __init__(self, in_channels: int, cfg: EncoderConfig):
        super().__init__()
        groups = cfg.group_norm_groups
        net = torchvision.models.resnet18(weights=None, norm_layer=lambda c: nn.GroupNorm(groups, c))
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        self.net = net
        self.projection = nn.Sequential(nn.Linear(512, cfg.feature_dim), nn.LayerNorm(cfg.feature_dim), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.net(x - 0.5))  # (B, feature_dim)


def make_trunk(in_channels: int, size: tuple[int, int], cfg: EncoderConfig) -> nn.Module:
    return ConvTrunk(in_channels, size, cfg) if cfg.trunk == "conv" else ResNet18Trunk(in_channels, cfg)


class ObservationEncoder(nn.Module):
    """(observations sharing a goal and task ids) -> one (B, out_dim) feature tensor each."""

    def __init__(self, spec: ObservationSpec, cfg: EncoderConfig):
        super().__init__()
        self.spec, self.cfg = spec, cfg
        self.early = spec.has_goal and bool(spec.goal_cameras) and cfg.goal_fusion == "early"
        if self.early and spec.goal_cameras != spec.cameras:
            raise SpecError(
                f"early goal fusion stacks each goal image on its camera: goal cameras {spec.goal_cameras} must"
                f" equal cameras {spec.cameras}; use goal_fusion='late'"
            )
        self.late_cameras = spec.goal_cameras if spec.has_goal and not self.early else ()
        sizes = dict(zip(spec.cameras, spec.image_sizes, strict=True))
        sizes.update(dict(zip(spec.goal_cameras, spec.goal_image_sizes, strict=True)))
        in_ch = 6 if self.early else 3
        all_cams = sorted({*spec.cameras, *self.late_cameras})
        if cfg.share_cameras and all_cams:
            if len({sizes[c] for c in all_cams}) > 1 and cfg.trunk == "conv":
                raise SpecError(f"a shared conv trunk needs one image size; got {sizes}; set share_cameras=False")
            self.trunks = nn.ModuleDict({"shared": make_trunk(in_ch, sizes[all_cams[0]], cfg)})
        else:
            self.trunks = nn.ModuleDict({c: make_trunk(in_ch, sizes[c], cfg) for c in all_cams})
        self.state_net = (
            nn.Sequential(nn.Linear(spec.state_dim, cfg.state_hidden), nn.ReLU())
            if spec.state_dim and cfg.state_hidden
            else None
        )
        self.state_norm = Normalizer(spec.state_mean, spec.state_std)
        self.goal_state_norm = Normalizer(spec.goal_state_mean, spec.goal_state_std)
        use_task = spec.num_tasks > 0 and cfg.task_embedding_dim > 0
        self.task_embedding = nn.Embedding(spec.num_tasks, cfg.task_embedding_dim) if use_task else None
        state_out = cfg.state_hidden if self.state_net is not None else spec.state_dim
        # goal − observation differences (``goal_delta``): cameras seen both as goal and observation through
        # late fusion (one trunk, one embedding space), and the goal state against the observed scene vector
        self.delta_cameras = tuple(c for c in self.late_cameras if c in spec.cameras) if cfg.goal_delta else ()
        same_layout = spec.scene_state_dim > 0 and spec.scene_state_dim == spec.goal_state_dim
        self.state_delta = bool(cfg.goal_delta and same_layout and not cfg.state_hidden)
        self.out_dim = (
            cfg.feature_dim * (len(spec.cameras) + len(self.late_cameras) + len(self.delta_cameras))
            + state_out
            + spec.goal_state_dim * (2 if self.state_delta else 1)
            + (cfg.task_embedding_dim if use_task else 0)
        )

    def _check(self, what: str, obs: Observation, cams: tuple[str, ...], state_dim: int) -> None:
        if tuple(sorted(obs.images)) != cams:
            raise SpecError(f"{what} has cameras {sorted(obs.images)}, the networks were built for {list(cams)}")
        got = 0 if obs.state is None else obs.state.shape[-1]
        if got != state_dim:
            raise SpecError(f"{what} has state dim {got}, the networks were built for {state_dim}")
        for c, x in obs.images.items():
            if x.dtype != torch.float32 or x.dim() != 4 or x.shape[1] != 3:
                raise SpecError(
                    f"{what} image {c!r} must be float (B, 3, H, W) in [0, 1]; got {x.dtype} {tuple(x.shape)}"
                )

    def _encode(self, cams: tuple[str, ...], images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run each trunk once on all images routed to it (concatenated along the batch)."""
        key = ["shared" if "shared" in self.trunks else c for c in cams]
        out: dict[int, torch.Tensor] = {}
        for k in dict.fromkeys(key):
            idx = [i for i, kk in enumerate(key) if kk == k]
            feats = self.trunks[k](torch.cat([images[i] for i in idx]))  # (sum n_i, feature_dim)
            for i, f in zip(idx, feats.split([images[i].shape[0] for i in idx]), strict=True):
                out[i] = f
        return [out[i] for i in range(len(cams))]

    def check_goal(self, goal: Observation | None, task_ids: torch.Tensor | None) -> None:
        spec = self.spec
        if spec.has_goal:
            if goal is None:
                raise SpecError("the networks are goal-conditioned but no goal was given (Batch.goals is None)")
            self._check("goal", goal, spec.goal_cameras, spec.goal_state_dim)
        elif goal is not None:
            raise SpecError("a goal was given but the networks were built without goals (spec.has_goal False)")
        if self.task_embedding is not None and task_ids is None:
            raise SpecError(f"the networks are task-conditioned ({spec.num_tasks} tasks) but task_ids is None")

    def goal_features(self, goal: Observation | None, task_ids: torch.Tensor | None) -> torch.Tensor | None:
        """The part shared by every observation of a row: late-fused goal cameras, goal state, task -> (B, D_g).

        None when the networks are conditioned on neither a goal nor a task."""
        self.check_goal(goal, task_ids)
        parts: list[torch.Tensor] = []
        if goal is not None:  # check_goal: a goal exactly when the spec has one
            if self.late_cameras:
                parts += self._encode(self.late_cameras, [goal.images[c] for c in self.late_cameras])
            if self.spec.goal_state_dim:
                parts.append(self.goal_state_norm(goal.state))  # (B, G)
        if self.task_embedding is not None:
            parts.append(self.task_embedding(task_ids))  # (B, E)
        return torch.cat(parts, dim=1) if parts else None  # (B, D_g)

    def observation_features(self, observations: Sequence[Observation], goal: Observation | None) -> list[torch.Tensor]:
        """Cameras (early-fused with the goal images) and state of K observations, one pass -> K x (B, D_o)."""
        spec, K = self.spec, len(observations)
        for i, o in enumerate(observations):
            self._check(f"observation {i}", o, spec.cameras, spec.state_dim)
        images = []
        for c in spec.cameras:
            x = torch.cat([o.images[c] for o in observations])  # (K*B, 3, H, W)
            if self.early:
                if goal is None:
                    raise SpecError("the networks fuse goal images early but no goal was given")
                x = torch.cat([x, goal.images[c].repeat(K, 1, 1, 1)], dim=1)  # (K*B, 6, H, W)
            images.append(x)
        parts = self._encode(spec.cameras, images) if spec.cameras else []  # (K*B, F) each
        if spec.state_dim:
            s = self.state_norm(torch.cat([o.state for o in observations if o.state is not None]))  # (K*B, S)
            parts.append(s if self.state_net is None else self.state_net(s))
        return list(torch.cat(parts, dim=1).split(observations[0].batch_size))

    def join(self, f: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        """One observation's features (B, D_o) with the shared goal/task features (B, D_g) -> (B, out_dim).

        With ``goal_delta`` the differences goal − observation follow: per camera φ(g) − φ(s), and the
        normalized goal state minus the normalized scene part of the observation state (same layout and
        statistics: both are the lake's ``achieved_goal``)."""
        if g is None:
            return f
        parts = [f, g]
        D = self.cfg.feature_dim
        for c in self.delta_cameras:
            i, j = self.spec.cameras.index(c), self.late_cameras.index(c)
            parts.append(g[:, j * D : (j + 1) * D] - f[:, i * D : (i + 1) * D])  # (B, D)
        if self.state_delta:
            G = self.spec.goal_state_dim
            g0 = len(self.late_cameras) * D
            scene = f[:, len(self.spec.cameras) * D + self.spec.proprio_dim :][:, :G]  # (B, G), the scene part
            parts.append(g[:, g0 : g0 + G] - scene)  # (B, G)
        return torch.cat(parts, dim=1)  # (B, out_dim)

    def forward(
        self, observations: Sequence[Observation], goal: Observation | None = None, task_ids: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Encode K observations sharing a goal and task ids; each goal image is encoded once -> K x (B, out_dim)."""
        g = self.goal_features(goal, task_ids)  # (B, D_g) or None
        feats = self.observation_features(observations, goal)  # K x (B, D_o)
        return [self.join(f, g) for f in feats]
