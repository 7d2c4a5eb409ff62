"""The versioned episode lake (Icechunk + Zarr v3). See ``data_lake.lake`` for the layout."""

from data_lake.episode import Episode, EpisodeFormatError, iter_episode_paths, save_dir
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
