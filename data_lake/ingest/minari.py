"""Minari datasets on local disk (the HDF5 storage), read with ``h5py`` only.

Layout (``~/.minari/datasets/<namespace>/<name>-v<k>/``)::

    data/
    ├── metadata.json            dataset_id, env_spec (JSON text), total_episodes, ... (optional)
    └── main_data.hdf5
        ├── episode_0/           attrs: id, total_steps, seed
        │   ├── observations     (N + 1, ...)  or a group of keys for dict spaces (observations/<k>)
        │   ├── actions          (N, ...)
        │   ├── rewards          (N,)
        │   ├── terminations     (N,) bool
        │   ├── truncations      (N,) bool
        │   └── infos/ ...
        └── episode_1/ ...       read in numeric order

Step ``t`` pairs ``observations[t]`` with ``actions[t]``; the final observation (index N) has no
action and is not stored. The environment named in the metadata is recorded as provenance text
and never imported or constructed (no ``gymnasium.make``). Input paths may be the dataset
directory, its ``data/`` directory or ``main_data.hdf5`` itself.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py

from data_lake.ingest.errors import IngestError
from data_lake.ingest.hdf5 import open_h5, sources_from_group
from data_lake.ingest.hdf5 import version as h5_version
from data_lake.ingest.mapping import Mapping
from data_lake.ingest.streams import Unit

MAIN = "main_data.hdf5"


def version() -> str:
    return h5_version()


def main_file(path: Path) -> Path | None:
    for cand in (path, path / MAIN, path / "data" / MAIN):
        if cand.is_file() and cand.name == MAIN:
            return cand
    return None


def expand(path: Path) -> list[Path]:
    if main_file(path) is not None or not path.is_dir():
        return [path]
    found = sorted({p.parent.parent if p.parent.name == "data" else p.parent for p in path.rglob(MAIN)})
    return found or [path]


def _metadata(main: Path, f: h5py.File) -> dict[str, Any]:
    """Dataset metadata as plain JSON values (metadata.json, else the file's root attributes)."""
    meta: dict[str, Any] = {}
    js = main.parent / "metadata.json"
    if js.is_file():
        with contextlib.suppress(ValueError, OSError):
            meta = json.loads(js.read_text())
    if not meta:
        meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    out: dict[str, Any] = {}
    for k in ("dataset_id", "minari_version", "total_episodes", "total_steps", "data_format"):
        if k in meta:
            v = meta[k]
            out[k] = v.item() if hasattr(v, "item") else v
    spec = meta.get("env_spec")
    if isinstance(spec, str):  # a JSON text; read the id, never import or build the environment
        with contextlib.suppress(ValueError):
            spec = json.loads(spec)
    if isinstance(spec, dict):
        out["env_id"] = str(spec.get("id", ""))
    return out


def read(path: Path, mapping: Mapping) -> Iterator[Unit | IngestError]:
    main = main_file(path)
    if main is None:
        raise IngestError(
            "wrong_format",
            f"not a Minari dataset: no {MAIN} at {path}, {path}/{MAIN} or {path}/data/{MAIN}",
            source=str(path),
        )
    with open_h5(main, "minari") as f:
        info = _metadata(main, f)
        fmt = info.get("data_format")
        if fmt not in (None, "hdf5"):
            raise IngestError("wrong_format", f"Minari data_format is {fmt!r}; only hdf5 is read", source=str(path))
        episodes = sorted((k for k in f.keys() if re.fullmatch(r"episode_\d+", k)), key=lambda k: int(k[8:]))
        if not episodes:
            raise IngestError(
                "wrong_format", f"no episode_<n> groups in {main} (keys: {sorted(f.keys())[:20]})", source=str(path)
            )
        for name in episodes:
            label = f"{path}#{name}"
            g = f[name]
            try:
                actions = g.get("actions")
                n = len(actions) if isinstance(actions, h5py.Dataset) else None
                srcs = sources_from_group(g, mapping, label, n_steps=n)
            except IngestError as e:
                yield e.located(label)
                continue
            seed = g.attrs.get("seed")
            yield Unit(
                path,
                label,
                srcs,
                "minari",
                version(),
                info={**info, "episode": name, "seed": None if seed is None else int(seed)},
            )
