"""HDF5 logs with ``h5py``: the robomimic and ALOHA layouts (Minari is in ``minari.py``).

robomimic (one file, many demos; keys in the mapping are relative to each demo group)::

    data/                        attrs: env_args (JSON), total
    ├── demo_0/                  attrs: num_samples
    │   ├── obs/<name>           (N, ...)   e.g. obs/agentview_image uint8 (N, 84, 84, 3)
    │   ├── actions              (N, A)
    │   ├── rewards, dones       (N,)
    │   └── states               (N, D)
    └── demo_1/ ...              demos are read in numeric order (demo_2 before demo_10)
    mask/<filter_key>            optional: names of the demos in a split (``filter_key:``)

ALOHA (one file = one episode; keys relative to the file's root)::

    /                            attrs: sim, compress (optional)
    ├── observations/images/<cam>   uint8 (T, H, W, 3), or (T, L) padded JPEG bytes when compress
    ├── observations/qpos, qvel, effort   (T, 14)
    └── action                   (T, 14)

Neither layout stores time: sample i is at i / ``source_rate_hz`` (default ``rate_hz``).

Security: before anything is read, every link in the file is visited; external links, datasets
with external storage and virtual datasets are refused (``hdf5_external``): they make HDF5 open
or read other files named by the file itself.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from data_lake.ingest.errors import IngestError
from data_lake.ingest.mapping import Mapping
from data_lake.ingest.streams import ArraySource, Source, Unit

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
SUFFIXES = (".hdf5", ".h5", ".he5")


def version() -> str:
    return f"h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version})"


def is_hdf5(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(8)
    return head == HDF5_MAGIC or (path.stat().st_size > 0 and h5py.is_hdf5(path))


def expand(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    return [path]


def refuse_external(f: h5py.File, path: Path) -> None:
    """Raise ``hdf5_external`` for any external link, external storage or virtual dataset."""

    def visit(name: str, link: Any) -> IngestError | None:  # a return value stops the walk
        if isinstance(link, h5py.ExternalLink):
            return IngestError(
                "hdf5_external",
                f"external link to {link.filename}:{link.path} refused (it would open another file)",
                where=name,
            )
        if isinstance(link, h5py.SoftLink):
            return None
        if not isinstance(link, h5py.HardLink):
            return IngestError("hdf5_external", f"link of type {type(link).__name__} refused", where=name)
        obj = f.get(name)
        if isinstance(obj, h5py.Dataset):
            if obj.is_virtual:
                return IngestError(
                    "hdf5_external", "virtual dataset refused (it maps data from other files)", where=name
                )
            if obj.external:
                files = sorted({e[0] if isinstance(e[0], str) else e[0].decode() for e in obj.external})
                return IngestError("hdf5_external", f"dataset with external storage in {files} refused", where=name)
        return None

    problem = f.visititems_links(visit)
    if problem is not None:
        raise problem.located(str(path))


@contextlib.contextmanager
def open_h5(path: Path, fmt: str) -> Iterator[h5py.File]:
    """Open an HDF5 file read-only after checking it is one and refusing external data."""
    if not path.is_file():
        raise IngestError("not_found", f"expected a {fmt} HDF5 file, found no file", source=str(path))
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head != HDF5_MAGIC and not h5py.is_hdf5(path):
        raise IngestError(
            "wrong_format", f"not an HDF5 file (starts with {head!r}); --format is {fmt}", source=str(path)
        )
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        msg = str(e)
        code = "truncated" if "truncated" in msg or "eof" in msg.lower() else "corrupt"
        raise IngestError(code, f"h5py cannot open it: {msg}", source=str(path)) from e
    try:
        try:
            refuse_external(f, path)
        except IngestError as e:
            raise e.located(str(path)) from None
        except (OSError, RuntimeError, KeyError) as e:  # damaged object headers or B-trees
            raise IngestError("corrupt", f"the file's structure cannot be walked: {e}", source=str(path)) from e
        yield f
    finally:
        f.close()


def read_array(group: h5py.Group, key: str, where: str) -> h5py.Dataset:
    """The dataset at ``key`` (a path relative to ``group``), or ``missing_source`` listing keys."""
    obj = group.get(key)
    if not isinstance(obj, h5py.Dataset):
        have: list[str] = []
        group.visit(lambda n: have.append(n) if isinstance(group.get(n), h5py.Dataset) and len(have) < 40 else None)
        kind = "a group, not a dataset" if isinstance(obj, h5py.Group) else "missing"
        raise IngestError("missing_source", f"key {key!r} is {kind}; datasets here: {have}", where=where)
    return obj


def load(ds: h5py.Dataset, where: str) -> np.ndarray:
    """Read a whole dataset, turning read errors (truncated data, bad filters) into ``corrupt``."""
    try:
        return np.asarray(ds[()])
    except (OSError, ValueError) as e:
        raise IngestError("corrupt", f"dataset {ds.name} cannot be read: {e}", where=where) from e


def step_times(n: int, mapping: Mapping) -> np.ndarray:
    rate = mapping.source_rate_hz or mapping.rate_hz
    return np.round(np.arange(n) * (1e9 / rate)).astype(np.int64)


def sources_from_group(
    group: h5py.Group, mapping: Mapping, label: str, n_steps: int | None = None, encoded: bool = False
) -> dict[str, Source]:
    """One ArraySource per mapped key, all with ``n_steps`` samples (the first key's length if None).

    Images and encoded (JPEG rows) datasets stay on disk and are read at the picked samples;
    other keys are loaded. A key with one more sample than the others (Minari's final
    observation) is cut to the common length."""
    out: dict[str, Source] = {}
    names = sorted(mapping.names())
    datasets = {k: read_array(group, k, k) for k in names}
    n = n_steps if n_steps is not None else min(len(d) for d in datasets.values())
    t = step_times(n, mapping)
    cameras = {s.name for s in [*mapping.cameras.values(), *mapping.depth.values()]}
    for k, ds in datasets.items():
        if len(ds) not in (n, n + 1):
            raise IngestError(
                "shape_change", f"{len(ds)} samples, but the episode has {n} (from its other keys)", where=k
            )
        is_jpeg = encoded and k in cameras and ds.ndim == 2 and ds.dtype == np.uint8
        if k in cameras:
            data: Any = ds if len(ds) == n else _Head(ds, n)
        else:
            data = load(ds, k)[:n]
            if data.dtype.kind in "SO":
                data = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in data], dtype=object)
        out[k] = ArraySource(k, t, data, encoded=is_jpeg, as_stored=is_jpeg)
    return out


class _Head:
    """The first ``n`` rows of an h5py dataset (for datasets with one extra final sample)."""

    def __init__(self, ds: h5py.Dataset, n: int):
        self.ds, self.n = ds, n
        self.dtype, self.ndim = ds.dtype, ds.ndim

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: Any) -> Any:
        return self.ds[key]


# ---------------------------------------------------------------------------- robomimic
def _demo_number(name: str) -> int:
    m = re.fullmatch(r"demo_(\d+)", name)
    return int(m.group(1)) if m else -1


def read_robomimic(path: Path, mapping: Mapping) -> Iterator[Unit | IngestError]:
    """One unit per demo, in numeric order (``filter_key`` keeps those listed in ``mask/<key>``)."""
    with open_h5(path, "robomimic") as f:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            raise IngestError(
                "wrong_format",
                f"no 'data' group: not the robomimic layout (top-level keys: {sorted(f.keys())[:20]})",
                source=str(path),
            )
        demos = sorted((k for k in data.keys() if _demo_number(k) >= 0), key=_demo_number)
        if mapping.filter_key is not None:
            mask = f.get(f"mask/{mapping.filter_key}")
            if not isinstance(mask, h5py.Dataset):
                raise IngestError(
                    "missing_source",
                    f"filter_key {mapping.filter_key!r} has no mask/{mapping.filter_key} dataset",
                    source=str(path),
                    where=f"mask/{mapping.filter_key}",
                )
            keep = {v.decode() if isinstance(v, bytes) else str(v) for v in mask[()]}
            demos = [d for d in demos if d in keep]
        env_args = data.attrs.get("env_args")
        env = ""
        if env_args is not None:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                env = json.loads(env_args).get("env_name", "")
        for name in demos:
            label = f"{path}#{name}"
            try:
                g = data[name]
                srcs = sources_from_group(g, mapping, label)
            except IngestError as e:
                yield e.located(label)
                continue
            yield Unit(path, label, srcs, "robomimic", version(), info={"demo": name, "env_name": env})


# ---------------------------------------------------------------------------- ALOHA
def read_aloha(path: Path, mapping: Mapping) -> Iterator[Unit | IngestError]:
    """One unit per file; ``compress=True`` files hold padded JPEG rows, decoded with OpenCV."""
    with open_h5(path, "aloha") as f:
        if not isinstance(f.get("observations"), h5py.Group):
            raise IngestError(
                "wrong_format",
                f"no 'observations' group: not the ALOHA layout (top-level keys: {sorted(f.keys())[:20]})",
                source=str(path),
            )
        compress = bool(f.attrs.get("compress", False))
        srcs = sources_from_group(f, mapping, str(path), encoded=True)
        info = {"compress": compress, "sim": bool(f.attrs.get("sim", False))}
        yield Unit(path, str(path), srcs, "aloha", version(), info=info)
