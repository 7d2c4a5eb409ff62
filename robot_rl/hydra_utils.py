"""Hydra at the edge: compose a config from ``configs/`` plus ``key=value`` overrides, once, into plain
containers (``robot_rl.config.from_dict`` makes the typed dataclass). Nothing past the entry point
sees Hydra or OmegaConf."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def compose(name: str, overrides: list[str]) -> dict[str, Any]:
    """The composed config ``configs/<name>.yaml`` with overrides, as plain containers."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    # an entry point with config groups of its own lives in configs/<name>/ (so that its group names,
    # e.g. pretrain's task/, do not collide with plain keys of other commands, e.g. collect's task);
    # groups shared by several entry points (algo/) live in configs/ and are on the search path.
    root, extra = CONFIG_DIR, []
    if (CONFIG_DIR / name / f"{name}.yaml").exists():
        root, extra = CONFIG_DIR / name, [f"hydra.searchpath=[file://{CONFIG_DIR}]"]
    with initialize_config_dir(config_dir=str(root), version_base="1.3"):
        cfg = hydra_compose(config_name=name, overrides=[*overrides, *extra])
    try:
        out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        raise ValueError(f"{name}: missing required setting {e.full_key!r}; pass {e.full_key}=...") from None
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def describe(name: str) -> str:
    """The config file itself: the best --help for its keys."""
    own = CONFIG_DIR / name / f"{name}.yaml"
    return (own if own.exists() else CONFIG_DIR / f"{name}.yaml").read_text()


def dataclass_defaults(cls: type) -> dict[str, Any]:
    """Every field of a config dataclass with its default, nested dataclasses as dicts, tuples as lists
    (what a config-group file lists, so each field can be overridden as ``group.field=value``)."""
    import json

    instance = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.default is not dataclasses.MISSING:
            instance[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            instance[f.name] = f.default_factory()
    plain = {
        k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
        for k, v in instance.items()
    }
    return json.loads(json.dumps(plain))


def algo_settings(name: str, **overrides: Any) -> dict[str, Any]:
    """The algorithm's config group ``configs/algo/<name>.yaml`` as a plain ``algo_cfg`` dict (without
    ``name``), with ``overrides`` applied; a dict override (e.g. ``encoder={...}``) updates that
    nested group key by key instead of replacing it."""
    cfg = {k: v for k, v in compose("pretrain", [f"algo={name}"])["algo"].items() if k != "name"}
    for k, v in overrides.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg
