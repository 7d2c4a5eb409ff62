"""The mapping file: which topic/key becomes which episode field, how episodes split, the clock.

A mapping is YAML (see ``docs/ingest.md`` and ``configs/ingest/*.yaml``)::

    format: mcap                      # mcap | ros1 | ros2 | robomimic | aloha | lerobot | minari | ogbench
                                      # (or --format on the command line)
    rate_hz: 30                       # the target clock every stream is resampled onto
    cameras: {front: /cam/front/compressed}          # name -> source (a string is the topic/key)
    state: [{topic: /joint_states, field: position}, /ee_pose]   # concatenated in this order
    action: [/cmd]
    reward: {topic: /reward}          # or a number (default 0.0)
    success: {topic: /success, reduce: last}          # or true/false/null (default null)
    terminal: success                 # "success", true/false, or a source (default "success")
    task: pick_cube                   # a string or a source carrying strings
    language: pick up the cube        # a string, a source, or null
    episodes: {split: file}           # file | marker (+ marker: SOURCE) | gap (+ gap_s)
    sync: {max_staleness_s: 0.1, on_gap: split, time: log, on_backwards: reject}

Everything is parsed once into frozen dataclasses that validate themselves; an error names the
mapping file, the key path and what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping as AnyMapping
from pathlib import Path
from typing import Any

import yaml

from data_lake.ingest.errors import MappingError

FORMATS = ("mcap", "ros1", "ros2", "robomimic", "aloha", "lerobot", "minari", "ogbench")
RESIZE_POLICIES = ("crop", "pad", "stretch")
SPLITS = ("file", "marker", "gap")
REDUCE = ("any", "all", "last", "first")


def _check_keys(d: AnyMapping[str, Any], allowed: tuple[str, ...], where: str, src: str) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise MappingError(f"unknown key(s) {unknown}; allowed here: {list(allowed)}", source=src, where=where)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One topic (bags, MCAP) or key (HDF5, LeRobot, Minari) and how to read a value from it.

    ``field``: a message field (``JointState``: ``position`` | ``velocity`` | ``effort``; ``Pose``:
    ``position`` | ``orientation``; ``Twist``: ``linear`` | ``angular``) or a dotted path into any
    message (``pose.position``); ``joints``: pick and order ``JointState`` joints by name;
    ``indices``: pick vector elements; ``channels``: the channel order of stored image arrays
    (``rgb`` or ``bgr``); ``reduce``: how a flag or text source becomes one per-episode value.
    """

    name: str
    field: str | None = None
    joints: tuple[str, ...] | None = None
    indices: tuple[int, ...] | None = None
    channels: str = "rgb"
    reduce: str | None = None

    KEYS = ("topic", "key", "field", "joints", "indices", "channels", "reduce")

    @classmethod
    def parse(cls, v: Any, where: str, src: str) -> SourceSpec:
        if isinstance(v, str):
            if not v:
                raise MappingError("expected a topic/key name, found an empty string", source=src, where=where)
            return cls(v)
        if not isinstance(v, AnyMapping):
            raise MappingError(
                f"expected a topic/key string or a mapping {{topic|key: ..., field: ...}}, found {v!r}",
                source=src,
                where=where,
            )
        _check_keys(v, cls.KEYS, where, src)
        names = [v[k] for k in ("topic", "key") if k in v]
        if len(names) != 1 or not isinstance(names[0], str) or not names[0]:
            raise MappingError("give exactly one of 'topic' or 'key' (a non-empty string)", source=src, where=where)
        joints = v.get("joints")
        if joints is not None and (not isinstance(joints, list) or not all(isinstance(j, str) for j in joints)):
            raise MappingError(f"'joints' must be a list of joint names, found {joints!r}", source=src, where=where)
        indices = v.get("indices")
        if indices is not None and (
            not isinstance(indices, list) or not indices or not all(isinstance(i, int) and i >= 0 for i in indices)
        ):
            raise MappingError(
                f"'indices' must be a non-empty list of non-negative integers, found {indices!r}",
                source=src,
                where=where,
            )
        channels = v.get("channels", "rgb")
        if channels not in ("rgb", "bgr"):
            raise MappingError(f"'channels' must be rgb or bgr, found {channels!r}", source=src, where=where)
        reduce = v.get("reduce")
        if reduce is not None and reduce not in REDUCE:
            raise MappingError(f"'reduce' must be one of {list(REDUCE)}, found {reduce!r}", source=src, where=where)
        field = v.get("field")
        if field is not None and (not isinstance(field, str) or not field):
            raise MappingError(f"'field' must be a non-empty string, found {field!r}", source=src, where=where)
        return cls(
            names[0],
            field,
            tuple(joints) if joints is not None else None,
            tuple(indices) if indices is not None else None,
            channels,
            reduce,
        )

    def label(self) -> str:
        return self.name + (f"[{self.field}]" if self.field else "")


@dataclasses.dataclass(frozen=True)
class ValueSpec:
    """A per-episode or per-step value: a constant, or a source (with how to reduce it)."""

    constant: Any = None
    source: SourceSpec | None = None

    @classmethod
    def parse(cls, v: Any, where: str, src: str, constant_types: tuple[type, ...]) -> ValueSpec:
        if v is None or (isinstance(v, constant_types) and not isinstance(v, AnyMapping)):
            if isinstance(v, bool) and bool not in constant_types:
                raise MappingError(
                    f"expected {_names(constant_types)} or a source, found {v!r}", source=src, where=where
                )
            return cls(constant=v)
        if isinstance(v, AnyMapping) or isinstance(v, str):
            return cls(source=SourceSpec.parse(v, where, src))
        raise MappingError(f"expected {_names(constant_types)} or a source, found {v!r}", source=src, where=where)


def _names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """How one source (a file, a demo) becomes episodes.

    ``file``: the whole source is one episode; ``marker``: each sample on ``marker`` starts an
    episode (samples before the first marker are dropped with a warning); ``gap``: a silence
    longer than ``gap_s`` on every step stream ends an episode. Pieces shorter than
    ``min_steps`` ticks are dropped with a ``too_short`` warning. Each window (whose last episode's
    flags reduce up to its end) ends where the next one starts, the last one at the end of the
    source (``data_lake.ingest.sync.windows``).
    """

    split: str = "file"
    marker: SourceSpec | None = None
    gap_s: float = 1.0
    min_steps: int = 2

    KEYS = ("split", "marker", "gap_s", "min_steps")

    @classmethod
    def parse(cls, v: Any, src: str) -> SplitSpec:
        if v is None:
            return cls()
        if not isinstance(v, AnyMapping):
            raise MappingError(f"expected a mapping, found {v!r}", source=src, where="episodes")
        _check_keys(v, cls.KEYS, "episodes", src)
        split = v.get("split", "file")
        if split not in SPLITS:
            raise MappingError(f"'split' must be one of {list(SPLITS)}, found {split!r}", source=src, where="episodes")
        marker = SourceSpec.parse(v["marker"], "episodes.marker", src) if v.get("marker") is not None else None
        if split == "marker" and marker is None:
            raise MappingError("split: marker needs 'marker: <topic or key>'", source=src, where="episodes")
        gap_s = _positive(v.get("gap_s", 1.0), "episodes.gap_s", src)
        min_steps = v.get("min_steps", 2)
        if not isinstance(min_steps, int) or min_steps < 2:
            raise MappingError(
                f"'min_steps' must be an integer >= 2, found {min_steps!r}", source=src, where="episodes"
            )
        return cls(split, marker, gap_s, min_steps)


@dataclasses.dataclass(frozen=True)
class SyncSpec:
    """Resampling onto the target clock (see ``data_lake.ingest.sync``).

    ``time``: ``log`` (when the recorder got the message; MCAP log time, bag time) or ``header``
    (``header.stamp`` where the message has one, log time otherwise). ``max_staleness_s``: the
    oldest a stream's latest sample may be at a tick. ``on_gap``: ``split`` drops the stale ticks
    and splits the episode there, ``reject`` rejects it. ``on_backwards``: ``reject`` or ``drop``
    samples whose timestamp goes back.
    """

    time: str = "log"
    max_staleness_s: float = 0.1
    on_gap: str = "split"
    on_backwards: str = "reject"

    KEYS = ("time", "max_staleness_s", "on_gap", "on_backwards")

    @classmethod
    def parse(cls, v: Any, src: str) -> SyncSpec:
        if v is None:
            return cls()
        if not isinstance(v, AnyMapping):
            raise MappingError(f"expected a mapping, found {v!r}", source=src, where="sync")
        _check_keys(v, cls.KEYS, "sync", src)
        out = cls(
            time=v.get("time", "log"),
            max_staleness_s=_positive(v.get("max_staleness_s", 0.1), "sync.max_staleness_s", src),
            on_gap=v.get("on_gap", "split"),
            on_backwards=v.get("on_backwards", "reject"),
        )
        for key, allowed in (("time", ("log", "header")), ("on_gap", ("split", "reject"))):
            if getattr(out, key) not in allowed:
                raise MappingError(
                    f"must be one of {list(allowed)}, found {getattr(out, key)!r}", source=src, where=f"sync.{key}"
                )
        if out.on_backwards not in ("reject", "drop"):
            raise MappingError(
                f"must be reject or drop, found {out.on_backwards!r}", source=src, where="sync.on_backwards"
            )
        return out


def _positive(v: Any, where: str, src: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise MappingError(f"expected a positive number, found {v!r}", source=src, where=where)
    return float(v)


@dataclasses.dataclass(frozen=True)
class Mapping:
    """A parsed, validated mapping file. ``sha256`` hashes the file's bytes (provenance)."""

    format: str | None
    rate_hz: float
    state: tuple[SourceSpec, ...]
    action: tuple[SourceSpec, ...]
    cameras: dict[str, SourceSpec] = dataclasses.field(default_factory=dict)
    depth: dict[str, SourceSpec] = dataclasses.field(default_factory=dict)
    reward: ValueSpec = ValueSpec(constant=0.0)
    success: ValueSpec = ValueSpec()
    terminal: ValueSpec = ValueSpec(constant="success")
    task: ValueSpec = ValueSpec(constant="")
    language: ValueSpec = ValueSpec()
    robot: str = ""
    image_size: tuple[int, int] | None = None
    resize: str = "crop"
    source_rate_hz: float | None = None
    on_truncated: str = "recover"
    filter_key: str | None = None
    episodes: SplitSpec = SplitSpec()
    sync: SyncSpec = SyncSpec()
    path: str = ""
    sha256: str = ""

    KEYS = (
        "format",
        "rate_hz",
        "state",
        "action",
        "cameras",
        "depth",
        "reward",
        "success",
        "terminal",
        "task",
        "language",
        "robot",
        "image_size",
        "resize",
        "source_rate_hz",
        "on_truncated",
        "filter_key",
        "episodes",
        "sync",
    )

    @classmethod
    def from_dict(cls, d: Any, *, path: str = "", sha256: str = "") -> Mapping:
        src = path or "<mapping>"
        if not isinstance(d, AnyMapping):
            raise MappingError(f"a mapping file holds a YAML mapping at the top, found {type(d).__name__}", source=src)
        _check_keys(d, cls.KEYS, "(top level)", src)
        for req in ("rate_hz", "state", "action"):
            if req not in d:
                raise MappingError(f"missing the required key {req!r}", source=src, where=req)
        fmt = d.get("format")
        if fmt is not None and fmt not in FORMATS:
            raise MappingError(f"must be one of {list(FORMATS)}, found {fmt!r}", source=src, where="format")

        def sources(key: str) -> tuple[SourceSpec, ...]:
            v = d.get(key)
            items = v if isinstance(v, list) else [v]
            if not items or items == [None]:
                raise MappingError("needs at least one source", source=src, where=key)
            return tuple(SourceSpec.parse(x, f"{key}[{i}]", src) for i, x in enumerate(items))

        def named(key: str) -> dict[str, SourceSpec]:
            v = d.get(key) or {}
            if not isinstance(v, AnyMapping):
                raise MappingError("expected {name: source, ...}", source=src, where=key)
            for name in v:
                if not isinstance(name, str) or not name or "/" in name:
                    raise MappingError(
                        f"camera names are non-empty strings without '/', found {name!r}", source=src, where=key
                    )
            return {name: SourceSpec.parse(s, f"{key}.{name}", src) for name, s in v.items()}

        size = d.get("image_size")
        if size is not None:
            if not (isinstance(size, list) and len(size) == 2 and all(isinstance(x, int) and x > 0 for x in size)):
                raise MappingError(
                    f"expected [height, width] in pixels, found {size!r}", source=src, where="image_size"
                )
            size = (size[0], size[1])
        resize = d.get("resize", "crop")
        if resize not in RESIZE_POLICIES:
            raise MappingError(f"must be one of {list(RESIZE_POLICIES)}, found {resize!r}", source=src, where="resize")
        on_truncated = d.get("on_truncated", "recover")
        if on_truncated not in ("recover", "reject"):
            raise MappingError(f"must be recover or reject, found {on_truncated!r}", source=src, where="on_truncated")
        terminal = d.get("terminal", "success")
        terminal_spec = (
            ValueSpec(constant="success")
            if terminal == "success"
            else ValueSpec.parse(terminal, "terminal", src, (bool,))
        )
        robot = d.get("robot", "")
        if not isinstance(robot, str):
            raise MappingError(f"expected a string, found {robot!r}", source=src, where="robot")
        filter_key = d.get("filter_key")
        if filter_key is not None and not isinstance(filter_key, str):
            raise MappingError(f"expected a string, found {filter_key!r}", source=src, where="filter_key")
        out = cls(
            format=fmt,
            rate_hz=_positive(d["rate_hz"], "rate_hz", src),
            state=sources("state"),
            action=sources("action"),
            cameras=named("cameras"),
            depth=named("depth"),
            reward=ValueSpec.parse(d.get("reward", 0.0), "reward", src, (int, float)),
            success=ValueSpec.parse(d.get("success"), "success", src, (bool,)),
            terminal=terminal_spec,
            task=_text(d.get("task", ""), "task", src),
            language=_text(d.get("language"), "language", src),
            robot=robot,
            image_size=size,
            resize=resize,
            source_rate_hz=_positive(d["source_rate_hz"], "source_rate_hz", src) if d.get("source_rate_hz") else None,
            on_truncated=on_truncated,
            filter_key=filter_key,
            episodes=SplitSpec.parse(d.get("episodes"), src),
            sync=SyncSpec.parse(d.get("sync"), src),
            path=path,
            sha256=sha256 or hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest(),
        )
        if isinstance(out.reward.constant, bool):
            raise MappingError("expected a number or a source, found a boolean", source=src, where="reward")
        return out

    @property
    def step_ns(self) -> float:
        return 1e9 / self.rate_hz

    def names(self) -> set[str]:
        """Every topic/key the mapping reads."""
        specs: list[SourceSpec | None] = [*self.state, *self.action, *self.cameras.values(), *self.depth.values()]
        specs += [v.source for v in (self.reward, self.success, self.terminal, self.task, self.language)]
        specs.append(self.episodes.marker)
        return {s.name for s in specs if s is not None}

    def flag_names(self) -> set[str]:
        """Topics/keys read only as per-episode flags (``success``, ``terminal``): one with no
        sample leaves the flag unknown (a warning) instead of rejecting the source."""
        flags = {v.source.name for v in (self.success, self.terminal) if v.source is not None}
        others: list[SourceSpec | None] = [*self.state, *self.action, *self.cameras.values(), *self.depth.values()]
        others += [v.source for v in (self.reward, self.task, self.language)]
        others.append(self.episodes.marker)
        return flags - {s.name for s in others if s is not None}


def _text(v: Any, where: str, src: str) -> ValueSpec:
    """Task and language: a bare string is the text itself; a mapping {topic|key: ...} is a source."""
    if v is None or isinstance(v, str):
        return ValueSpec(constant=v)
    if isinstance(v, AnyMapping):
        return ValueSpec(source=SourceSpec.parse(v, where, src))
    raise MappingError(f"expected a string, {{topic|key: ...}} or null, found {v!r}", source=src, where=where)


# Formats with a fixed layout, so that ``--format`` alone is enough (no ``--mapping``); each is
# also written out, with comments, as configs/ingest/<format>.yaml.
DEFAULT_MAPPINGS: dict[str, dict[str, Any]] = {
    "ogbench": {"format": "ogbench", "rate_hz": 20, "state": ["observations"], "action": ["actions"]},
}


def default_mapping(fmt: str | None) -> Mapping:
    """The built-in mapping of a fixed-layout format (``DEFAULT_MAPPINGS``)."""
    if fmt not in DEFAULT_MAPPINGS:
        raise MappingError(
            f"--format {fmt} needs --mapping FILE (examples in configs/ingest/); only {list(DEFAULT_MAPPINGS)} "
            "have a built-in mapping",
            source="<no mapping>",
        )
    return Mapping.from_dict(DEFAULT_MAPPINGS[fmt], path=f"<built-in {fmt} mapping>")


def load_mapping(path: str | os.PathLike[str]) -> Mapping:
    """Read and validate a mapping YAML file."""
    p = Path(path)
    if not p.is_file():
        raise MappingError(f"no mapping file at {p}; see configs/ingest/*.yaml for examples", source=str(p))
    raw = p.read_bytes()
    try:
        d = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise MappingError(f"not valid YAML: {e}", source=str(p)) from e
    return Mapping.from_dict(d, path=str(p), sha256=hashlib.sha256(raw).hexdigest())
