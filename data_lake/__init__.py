"""The versioned episode lake (Icechunk + Zarr v3). See ``data_lake.lake`` for the layout.

The lake's names are imported on first use: a process that only builds episodes (a collection
worker) never loads Icechunk and Zarr.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from data_lake.episode import Episode, EpisodeFormatError, iter_episode_paths, save_dir

if TYPE_CHECKING:
    from data_lake.lake import (
        DEFAULT_URI,
        CommitInfo,
        EpisodeRecord,
        Lake,
        LakeError,
        LakeView,
        NotALakeError,
        UnknownRefError,
        VerifyReport,
        WriteResult,
    )
    from data_lake.storage import UnsupportedURIError
    from data_lake.validate import EpisodeValidationError, Problem

_LAZY = {
    **dict.fromkeys(
        (
            "DEFAULT_URI",
            "CommitInfo",
            "EpisodeRecord",
            "Lake",
            "LakeError",
            "LakeView",
            "NotALakeError",
            "UnknownRefError",
            "VerifyReport",
            "WriteResult",
        ),
        "data_lake.lake",
    ),
    "UnsupportedURIError": "data_lake.storage",
    "EpisodeValidationError": "data_lake.validate",
    "Problem": "data_lake.validate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'data_lake' has no attribute {name!r}")


__all__ = [
    "DEFAULT_URI",
    "CommitInfo",
    "Episode",
    "EpisodeFormatError",
    "EpisodeRecord",
    "EpisodeValidationError",
    "Lake",
    "LakeError",
    "LakeView",
    "NotALakeError",
    "Problem",
    "UnknownRefError",
    "UnsupportedURIError",
    "VerifyReport",
    "WriteResult",
    "iter_episode_paths",
    "save_dir",
]
