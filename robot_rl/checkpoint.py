"""Checkpoints of an Algorithm: safetensors for tensors, JSON for everything else; never pickle.

Layout of a checkpoint directory::

    <dir>/
      tensors.safetensors   nets/<module>.<param>            every network, targets included
                            optim/<optimizer>/<index>/<key>  optimizer state tensors (Adam exp_avg, step, ...)
      state.json            {"format", "algo", "config", "spec", "step", "rng", "torch_rng",
                             "optimizers": {name: {"param_groups", "scalars"}}, "extra"}

``state.json`` is written last (each file via a temporary name and ``os.replace``), so a directory
with a ``state.json`` is complete. RNG states are stored as lists of byte values. Loading restores
networks, optimizer state, the step counter and the algorithm's and torch's global RNG, so on the
CPU training resumes bitwise-equal. ``torch.load`` is never used.

A policy directory (``save_policy``) holds only the acting networks: ``policy.safetensors``
(``<module>.<param>`` of ``algo.policy``) and ``policy.json`` (algorithm, config, spec, step, meta).

Loading, one function per use:

    load_algorithm(ckpt)     the whole algorithm, restored to resume training (optimizers, RNGs)
    load_policy(ckpt|policy) a TrainedPolicy: only the acting networks are built (evaluation, deployment)
    load_pretrained(...)     a freshly built algorithm holding the saved networks (finetuning's source)

All three build from the JSON's ``algo``/``config``/``spec`` in one place (``build_algorithm``, or
``ALGOS[algo].build_policy`` for the acting networks alone).
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from robot_rl.algos import ALGOS, Algorithm, BaseAlgorithm, TrainedPolicy
from robot_rl.algos.qtopt import CEMConfig, CEMPolicy
from robot_rl.config import from_dict
from robot_rl.nets import Critic, ObservationSpec

FORMAT = "robot-rl/checkpoint/v1"
TENSORS, STATE = "tensors.safetensors", "state.json"


class CheckpointError(ValueError):
    pass


def _config(cls: type, d: dict[str, Any]) -> Any:
    """A saved algorithm config (``dataclasses.asdict`` output) rebuilt as ``cls``."""
    try:
        return from_dict(cls, d)
    except ValueError as e:
        raise CheckpointError(
            f"the checkpoint's config does not fit {cls.__name__} (saved by another version?): {e}"
        ) from e


def _json_value(v: Any, where: str) -> Any:
    if isinstance(v, torch.Tensor):
        raise CheckpointError(f"{where} is a tensor in a JSON field; store it in the safetensors file")
    if isinstance(v, tuple | list):
        return [_json_value(x, where) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_value(x, f"{where}.{k}") for k, x in v.items()}
    if v is None or isinstance(v, bool | int | float | str):
        return v
    raise CheckpointError(f"{where} has a value of type {type(v).__name__} that JSON cannot hold: {v!r}")


def _atomic_write(path: Path, write: typing.Callable[[str], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(str(tmp))
    os.replace(tmp, path)


def save(path: str | os.PathLike[str], algo: Algorithm, extra: dict[str, Any] | None = None) -> Path:
    """Write ``algo`` (and JSON-able ``extra``: counters, scalars, sampler state) to directory ``path``."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = algo.state_dict()
    tensors = {f"nets/{k}": v.detach().contiguous().cpu() for k, v in state["nets"].items()}
    optimizers = {}
    for name, opt_state in state["optimizers"].items():
        scalars: dict[str, dict[str, Any]] = {}
        for idx, entry in opt_state["state"].items():
            for key, v in entry.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"optim/{name}/{idx}/{key}"] = v.detach().contiguous().cpu()
                else:
                    scalars.setdefault(str(idx), {})[key] = _json_value(v, f"optimizer {name} state {idx}.{key}")
        groups = _json_value(opt_state["param_groups"], f"optimizer {name} param_groups")
        optimizers[name] = {"param_groups": groups, "scalars": scalars}
    meta = {
        "format": FORMAT,
        "algo": algo.name,
        "config": _json_value(dataclasses.asdict(algo.cfg), "config"),
        "spec": _json_value(algo.spec.to_json(), "spec"),
        "step": algo.step,
        "rng": state["rng"].tolist(),
        "torch_rng": torch.get_rng_state().tolist(),
        "optimizers": optimizers,
        "extra": _json_value(extra or {}, "extra"),
    }
    _atomic_write(out / TENSORS, lambda p: save_file(tensors, p, metadata={"format": FORMAT}))
    _atomic_write(out / STATE, lambda p: Path(p).write_text(json.dumps(meta, indent=1)))
    return out


def _read(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    d = Path(path)
    if not (d / STATE).exists() or not (d / TENSORS).exists():
        raise CheckpointError(f"{d} is not a complete checkpoint: it needs {STATE} and {TENSORS}")
    meta = json.loads((d / STATE).read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{d / STATE} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return d, meta


def load(path: str | os.PathLike[str], algo: Algorithm) -> dict[str, Any]:
    """Restore everything ``save`` wrote into an already built ``algo``; returns ``extra``."""
    d, meta = _read(path)
    if meta["algo"] != algo.name:
        raise CheckpointError(f"checkpoint {d} holds {meta['algo']!r}, not {algo.name!r}")
    tensors = load_file(str(d / TENSORS), device=str(algo.device))
    nets = {k[len("nets/") :]: v for k, v in tensors.items() if k.startswith("nets/")}
    live = algo.state_dict()
    optimizers = {}
    for name, opt_meta in meta["optimizers"].items():
        if name not in live["optimizers"]:
            raise CheckpointError(f"checkpoint has optimizer {name!r}; this algorithm has {sorted(live['optimizers'])}")
        opt_state: dict[int, dict[str, Any]] = {}
        prefix = f"optim/{name}/"
        for k, v in tensors.items():
            if k.startswith(prefix):
                idx, key = k[len(prefix) :].split("/", 1)
                opt_state.setdefault(int(idx), {})[key] = v
        for idx, entry in opt_meta["scalars"].items():
            opt_state.setdefault(int(idx), {}).update(entry)
        groups = []
        for saved, current in zip(opt_meta["param_groups"], live["optimizers"][name]["param_groups"], strict=True):
            # JSON turned tuples (Adam's betas) into lists: give them back their live types
            groups.append({k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()})
        optimizers[name] = {"state": opt_state, "param_groups": groups}
    algo.load_state_dict(
        {
            "nets": nets,
            "optimizers": optimizers,
            "step": meta["step"],
            "rng": torch.tensor(meta["rng"], dtype=torch.uint8),
        }
    )
    torch.set_rng_state(torch.tensor(meta["torch_rng"], dtype=torch.uint8))
    return meta["extra"]


def build_algorithm(info: dict[str, Any], device: str | torch.device = "cpu") -> BaseAlgorithm:
    """The algorithm a checkpoint's or policy's JSON describes (``algo``, ``config``, ``spec``), freshly built."""
    cls = algorithm_class(info["algo"])
    return cls(_config(cls.config_class, info["config"]), ObservationSpec.from_json(info["spec"]), device)


def algorithm_class(name: str) -> type[BaseAlgorithm]:
    if name not in ALGOS:
        raise CheckpointError(f"unknown algorithm {name!r}; known: {sorted(ALGOS)}")
    return ALGOS[name]


def load_algorithm(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[Algorithm, dict[str, Any]]:
    """Build the algorithm a checkpoint was saved from (config and spec from its JSON) and restore it."""
    _, meta = _read(path)
    algo = build_algorithm(meta, device)
    return algo, load(path, algo)


# ---------------------------------------------------------------------------- policies
POLICY_FORMAT = "robot-rl/policy/v1"
POLICY_TENSORS, POLICY_META = "policy.safetensors", "policy.json"


def save_policy(path: str | os.PathLike[str], algo: Algorithm, meta: dict[str, Any] | None = None) -> Path:
    """Write what deployment needs to act: the policy's networks (``algo.policy``: encoder and actor,
    or the critic a CEM policy maximizes) and JSON metadata (algorithm, config, spec, and ``meta``:
    lake snapshot id, task vocabulary, conditioning). No critics' targets, optimizers or RNGs."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in algo.policy.state_dict().items()}
    info = {
        "format": POLICY_FORMAT,
        "algo": algo.name,
        "config": _json_value(dataclasses.asdict(algo.cfg), "config"),
        "spec": _json_value(algo.spec.to_json(), "spec"),
        "step": algo.step,
        "meta": _json_value(meta or {}, "meta"),
    }
    _atomic_write(out / POLICY_TENSORS, lambda p: save_file(tensors, p, metadata={"format": POLICY_FORMAT}))
    _atomic_write(out / POLICY_META, lambda p: Path(p).write_text(json.dumps(info, indent=1)))
    return out


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A run directory means its best checkpoint (else latest, else its policy); a checkpoint or policy
    directory is itself."""
    d = Path(path)
    if not d.exists():
        raise FileNotFoundError(f"ckpt={d} does not exist")
    for candidate in (d, d / "checkpoints" / "best", d / "checkpoints" / "latest", d / "policy"):
        if (candidate / STATE).exists() or (candidate / POLICY_META).exists():
            return candidate
    raise FileNotFoundError(f"ckpt={d} is neither a checkpoint, a policy nor a run directory with checkpoints/")


# what the metadata of a policy loaded from a full checkpoint keeps of the checkpoint's ``extra``
POLICY_META_KEYS = ("lake", "tasks", "conditioning", "finetune")


@dataclasses.dataclass(frozen=True)
class _Networks:
    """Where a saved policy's or a full checkpoint's networks are: JSON info (``algo``, ``config``,
    ``spec``, ``step``, ``meta``) and the safetensors file whose ``prefix + name`` tensors hold them."""

    info: dict[str, Any]
    file: Path
    prefix: str  # "nets/" in a checkpoint, "" in a policy

    @property
    def full(self) -> bool:
        return self.prefix == "nets/"

    def load_into(self, module: torch.nn.Module) -> None:
        """Load the tensors ``module`` names (``encoder.*``, ``actor.*``, ...), and only those, into it."""
        names = list(module.state_dict())
        with safe_open(str(self.file), framework="pt") as f:
            stored = set(f.keys())
            missing = [n for n in names if self.prefix + n not in stored]
            if missing:
                raise CheckpointError(
                    f"{self.file} lacks {len(missing)} tensors of {self.info['algo']}'s {type(module).__name__}, "
                    f"e.g. {missing[:3]}"
                )
            module.load_state_dict({n: f.get_tensor(self.prefix + n) for n in names})


def _networks(path: str | os.PathLike[str]) -> _Networks:
    d = Path(path)
    if (d / STATE).exists():  # a full checkpoint: its networks, without optimizers or auxiliary heads
        _, meta = _read(d)
        return _Networks(
            {**meta, "meta": {k: v for k, v in meta["extra"].items() if k in POLICY_META_KEYS}}, d / TENSORS, "nets/"
        )
    if not (d / POLICY_META).exists() or not (d / POLICY_TENSORS).exists():
        raise CheckpointError(f"{d} holds neither a checkpoint ({STATE}) nor a policy ({POLICY_META})")
    info = json.loads((d / POLICY_META).read_text())
    if info.get("format") != POLICY_FORMAT:
        raise CheckpointError(f"{d / POLICY_META} has format {info.get('format')!r}, expected {POLICY_FORMAT!r}")
    return _Networks(info, d / POLICY_TENSORS, "")


def load_policy(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[TrainedPolicy, dict[str, Any]]:
    """The acting networks of a saved policy (``save_policy``) or of a full checkpoint, and the metadata.

    Only what acting needs is built (``ALGOS[algo].build_policy``: encoder and actor, or encoder and the
    critic a CEM policy maximizes): no critics an actor learns with, no targets, no optimizers.
    """
    saved = _networks(path)
    cls = algorithm_class(saved.info["algo"])
    cfg = _config(cls.config_class, saved.info["config"])
    spec = ObservationSpec.from_json(saved.info["spec"])
    policy = cls.build_policy(cfg, spec)
    saved.load_into(policy)
    device = torch.device(device)
    trained = TrainedPolicy(cls.name, cfg, spec, policy.to(device).eval(), int(saved.info["step"]), device)
    return trained, saved.info["meta"]


def load_greedy_policy(
    path: str | os.PathLike[str], cem: CEMConfig | None = None, device: str | torch.device = "cpu"
) -> tuple[TrainedPolicy, dict[str, Any]]:
    """The greedy policy of a full checkpoint's critic: CEM over ``Q_1(s, ·, g)`` (QT-Opt's policy, default
    64 samples, 6 elites, 2 iterations) on the checkpoint's encoder and critic, whatever actor the
    algorithm trained (``robot-rl eval act=cem``). It separates the critic from policy extraction: an
    actor-critic's critic ranked by the search Actionable Models and QT-Opt act with.
    """
    saved = _networks(path)
    if not saved.full:
        raise CheckpointError(f"{path} is an exported policy; the greedy policy needs a full checkpoint (its critic)")
    algo = build_algorithm(saved.info, device)
    critic = algo.nets["critic"] if "critic" in algo.nets else None
    if not isinstance(critic, Critic):
        raise CheckpointError(
            f"{path}: {algo.name} has no Q(s, a) critic (nets: {sorted(algo.nets)}) for a greedy policy"
        )
    saved.load_into(algo.nets)
    policy = CEMPolicy(algo.nets.encoder, critic, cem or CEMConfig()).eval()
    trained = TrainedPolicy(
        f"{algo.name}+cem", algo.cfg, algo.spec, policy, int(saved.info["step"]), torch.device(device)
    )
    return trained, saved.info["meta"]


def load_pretrained(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[Algorithm, dict[str, Any]]:
    """A freshly built algorithm holding a checkpoint's networks (all but auxiliary heads; no optimizer
    state or RNG) or a policy's acting networks, and the metadata: what finetuning transfers from."""
    saved = _networks(path)
    algo = build_algorithm(saved.info, device)
    saved.load_into(algo.nets if saved.full else algo.policy)
    algo.step = int(saved.info["step"])
    return algo, saved.info["meta"]
