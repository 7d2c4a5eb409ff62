"""The config dataclasses shared by ``pretrain`` and ``finetune`` (the lake, the observations), and the
one way from a plain dict (a composed Hydra config, a checkpoint's JSON, a benchmark's settings) to a typed
config dataclass. Nothing past an entry point sees Hydra or OmegaConf."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


# ---------------------------------------------------------------------------- configs shared by pretrain and finetune
@dataclasses.dataclass(frozen=True)
class LakeConfig:
    uri: str = "./lake"
    ref: str = "main"  # branch:NAME, tag:NAME, snapshot:ID, or a bare branch/tag name


@dataclasses.dataclass(frozen=True)
class ObsConfig:
    cameras: tuple[str, ...] = ("front",)  # () for state-only
    use_state: bool = True  # proprioception
    scene_state: bool = False  # also observe the scene vector (object positions: privileged, "from states")
    augment_pad: int = 4  # DrQ random shift (pixels); 0 disables
    normalize: bool = True  # state and goal state enter the networks as (x - mean) / std of the data


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build the config dataclass ``cls`` from ``values``, recursively.

    Nested config dataclasses (also ``X | None``) are built from nested dicts; lists become tuples
    (lists of lists: tuples of tuples), except under fields typed ``dict`` or ``list``; missing keys
    take the field's default. Unknown keys are a ``ValueError`` that lists the known ones.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown settings {unknown} for {cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _value(hints[k], v) for k, v in values.items()})


def _value(hint: Any, v: Any) -> Any:
    options = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    target = next((o for o in options if dataclasses.is_dataclass(o)), None)
    if target is not None and isinstance(v, dict):
        return from_dict(target, v)  # type: ignore[arg-type]
    if isinstance(v, list) and not any(typing.get_origin(o) in (dict, list) or o in (dict, list) for o in options):
        return tuple(tuple(x) if isinstance(x, list) else x for x in v)
    return v


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, __import__("types").UnionType)
