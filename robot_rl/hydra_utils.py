"""Hydra at the edge: compose a config from ``configs/`` plus ``key=value`` overrides, once, into a
typed dataclass. Nothing past the entry point sees Hydra or OmegaConf."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def compose(name: str, overrides: list[str]) -> dict[str, Any]:
    """The composed config ``configs/<name>.yaml`` with overrides, as plain containers."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=name, overrides=overrides)
    try:
        out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        raise ValueError(f"{name}: missing required setting {e.full_key!r}; pass {e.full_key}=...") from None
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def to_dataclass(cls: type[T], values: dict[str, Any]) -> T:
    """Build a config dataclass; unknown keys are an error that lists the known ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown settings {unknown} for {cls.__name__}; known: {sorted(fields)}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**kw)


def describe(name: str) -> str:
    """The config file itself: the best --help for its keys."""
    return (CONFIG_DIR / f"{name}.yaml").read_text()
