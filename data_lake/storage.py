"""Where a lake lives: URI parsing into Icechunk storage, and the commit lock.

Supported URIs:

    ./lake, /abs/path, file:///abs/path   local filesystem (commits serialized by a file lock)
    memory://name                         in-process memory (tests); a name is reusable in the process
    s3://bucket/prefix                    S3 or compatible; credentials from the environment
                                          (AWS_ACCESS_KEY_ID, ...; AWS_ENDPOINT_URL for MinIO etc.)
    s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&allow_http=1&region=us-east-1
                                          an S3-compatible server named in the URI itself (no env
                                          vars needed for it; the query overrides AWS_ENDPOINT_URL*)

Credentials come only from the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, instance roles), never from the URI or arguments.

Icechunk's local-filesystem storage can silently lose one of two concurrent commits, so every
commit to a local lake holds an exclusive ``fcntl`` lock on ``<lake>/.robot-rl-commit.lock``;
the kernel releases it if the holder dies. Object stores rely on Icechunk's conflict detection
(conditional PUTs, docs/scaling.md): a commit that lost a race raises ``ConflictError`` and the
writer rebases and retries with backoff (``data_lake.lake``).
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import contextlib
import dataclasses
import gc
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import icechunk as ic
from filelock import FileLock

SCHEMES = ("file://", "memory://", "s3://")
S3_OPTIONS = ("endpoint_url", "allow_http", "region")  # the query keys an s3:// URI may carry
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
LOCK_NAME = ".robot-rl-commit.lock"

# Icechunk warns on every local open that its local storage is unsafe for concurrent commits;
# we serialize commits ourselves (see above), so only errors are logged.
ic.set_logs_filter("icechunk=error")


@atexit.register
def _let_icechunk_settle() -> None:
    """Icechunk's tokio worker threads can complete a task after the interpreter began shutting
    down, try to take the GIL and abort the process (SIGABRT, exit 134; seen in a few percent of
    short scripts that read a lake and exit). Collect garbage and give in-flight tasks a moment to
    land before Python finalizes; measured here: 7 of 60 runs aborted without it, none of 60 with it
    (tests/test_lake_basic.py::test_short_scripts_exit_cleanly)."""
    gc.collect()
    time.sleep(0.1)


class UnsupportedURIError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Location:
    """A parsed lake URI."""

    uri: str
    scheme: str  # "file" | "memory" | "s3"
    path: str  # local path, memory name, or "bucket/prefix"
    endpoint_url: str | None = None  # s3 only: from the URI query, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
    allow_http: bool | None = None  # s3 only: None = allowed iff the endpoint is http://
    region: str | None = None  # s3 only: None = AWS_REGION / AWS_DEFAULT_REGION

    @property
    def bucket(self) -> str:
        return self.path.partition("/")[0] if self.scheme == "s3" else ""

    def __str__(self) -> str:
        return self.uri


_MEMORY: dict[str, ic.Storage] = {}
_MEMORY_LOCKS: dict[str, threading.Lock] = {}


def parse_uri(uri: str | os.PathLike[str]) -> Location:
    text = os.fspath(uri)
    if "://" not in text:
        return Location(text, "file", str(Path(text).expanduser().absolute()))
    scheme, rest = text.split("://", 1)
    if scheme == "file":
        return Location(text, "file", str(Path(rest).expanduser().absolute()))
    if scheme == "memory":
        return Location(text, "memory", rest or "default")
    if scheme == "s3":
        rest, _, query = rest.partition("?")
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise UnsupportedURIError(f"{text!r}: an S3 URI needs a bucket: s3://bucket/prefix")
        return Location(text, "s3", rest.rstrip("/"), **_s3_options(text, query))
    raise UnsupportedURIError(
        f"unknown URI scheme {scheme + '://'!r} in {text!r}; supported: a local path, " + ", ".join(SCHEMES)
    )


def _s3_options(text: str, query: str) -> dict[str, Any]:
    """The options of an ``s3://...?key=value&...`` URI (see the module docstring), checked."""
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as e:
        raise UnsupportedURIError(f"{text!r}: malformed query {query!r} ({e})") from e
    opts: dict[str, Any] = {}
    for key, value in pairs:
        if key not in S3_OPTIONS:
            extra = (
                "; credentials are never read from the URI: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE)"
                if any(w in key.lower() for w in ("key", "secret", "token", "password", "cred"))
                else ""
            )
            raise UnsupportedURIError(f"unknown S3 URI option {key!r}; supported: {', '.join(S3_OPTIONS)}{extra}")
        if key in opts:
            raise UnsupportedURIError(f"S3 URI option {key!r} is given twice in {text!r}")
        if key == "allow_http":
            if value.lower() not in _TRUE + _FALSE:
                raise UnsupportedURIError(f"allow_http must be 1 or 0 (true/false), got {value!r}")
            opts[key] = value.lower() in _TRUE
        elif key == "endpoint_url" and not value.startswith(("http://", "https://")):
            raise UnsupportedURIError(f"endpoint_url must start with http:// or https://, got {value!r}")
        else:
            opts[key] = value
    return opts


def s3_endpoint(loc: Location) -> str | None:
    """The endpoint of an S3 lake: the URI's ``endpoint_url``, else the AWS environment's."""
    return loc.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def make_storage(loc: Location, *, create: bool) -> ic.Storage:
    if loc.scheme == "file":
        return ic.local_filesystem_storage(loc.path)
    if loc.scheme == "memory":
        if create:
            _MEMORY[loc.path] = ic.in_memory_storage()
            _MEMORY_LOCKS[loc.path] = threading.Lock()
        if loc.path not in _MEMORY:
            raise FileNotFoundError(f"no in-memory lake named {loc.uri!r} in this process")
        return _MEMORY[loc.path]
    bucket, _, prefix = loc.path.partition("/")
    endpoint = s3_endpoint(loc)
    is_http = bool(endpoint and endpoint.startswith("http://"))
    allow_http = is_http if loc.allow_http is None else loc.allow_http
    if is_http and not allow_http:
        raise UnsupportedURIError(
            f"{loc.uri}: endpoint {endpoint} is plain http but allow_http=0; use https or allow_http=1"
        )
    return ic.s3_storage(
        bucket=bucket,
        prefix=prefix or None,
        region=loc.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        endpoint_url=endpoint,
        allow_http=allow_http,
        force_path_style=bool(endpoint),  # S3-compatible servers (MinIO, moto) want path-style addressing
        from_env=True,  # credentials: the AWS chain only (env, profile, ~/.aws, instance role)
    )


@contextlib.contextmanager
def commit_lock(loc: Location, timeout_s: float = 600.0) -> Iterator[None]:
    """Serialize commits: a file lock for local lakes, a process lock for memory lakes."""
    if loc.scheme == "file":
        with FileLock(os.path.join(loc.path, LOCK_NAME), timeout=timeout_s):
            yield
    elif loc.scheme == "memory":
        with _MEMORY_LOCKS[loc.path]:
            yield
    else:
        yield


# ---------------------------------------------------------------------------- durability
# Icechunk's local storage writes files without fsync; on a power loss the kernel may persist a
# branch ref before the snapshot, manifests and chunks it points at. Local commits therefore go
# through a staging branch (data_lake.lake): the new files are fsynced, and only then does the
# user's branch move (a small ref write, fsynced too). These helpers do the fsyncs.
DATA_DIRS = ("chunks", "manifests", "snapshots", "transactions")


def listing(root: str, dirs: tuple[str, ...] = DATA_DIRS) -> dict[str, set[str]]:
    """File names in each of ``dirs`` under ``root`` (missing directories are empty)."""
    out: dict[str, set[str]] = {}
    for d in dirs:
        try:
            out[d] = set(os.listdir(os.path.join(root, d)))
        except FileNotFoundError:
            out[d] = set()
    return out


def fsync_path(path: str) -> None:
    """fsync one file or directory (a directory's fsync makes its new entries durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_new(root: str, before: dict[str, set[str]]) -> dict[str, set[str]]:
    """fsync every file that appeared in ``before``'s directories since (several at a time: on
    most disks concurrent fsyncs share the device flushes), then the directories; returns the
    listing after, to pass as the next ``before`` so nothing is synced twice."""
    paths, after = new_files(root, before)
    fsync_files(root, paths, list(before))
    return after


def new_files(root: str, before: dict[str, set[str]]) -> tuple[list[str], dict[str, set[str]]]:
    """The files that appeared in ``before``'s directories since, and the listing now. List in the
    writing thread: a file that appears after this listing is left to the next one (files written
    while another thread syncs are never taken for synced)."""
    after: dict[str, set[str]] = {}
    paths: list[str] = []
    for d, old in before.items():
        try:
            after[d] = set(os.listdir(os.path.join(root, d)))
        except FileNotFoundError:
            after[d] = set()
        paths += [os.path.join(root, d, name) for name in after[d] - old]
    return paths, after


def fsync_files(root: str, paths: list[str], dirs: list[str]) -> None:
    """fsync ``paths`` (several at a time), then the directories ``dirs`` under ``root``, then ``root``."""
    if len(paths) > 1:
        with cf.ThreadPoolExecutor(min(FSYNC_THREADS, len(paths))) as pool:
            list(pool.map(_fsync_if_present, paths))
    elif paths:
        _fsync_if_present(paths[0])
    for d in dirs:
        with contextlib.suppress(FileNotFoundError):
            fsync_path(os.path.join(root, d))
    fsync_path(root)


FSYNC_THREADS = 8


@contextlib.contextmanager
def early_writeback(root: str, before: dict[str, set[str]], interval_s: float = 0.005) -> Iterator[None]:
    """While the block writes files under ``root``, fsync the new ones in ``before``'s directories
    as they appear (a background thread), so the disk works while the writing goes on instead of
    after it. Only a head start: a file may be synced while still being written, so the durable
    path still fsyncs every new file after the block (``fsync_files``/``fsync_new``); those that
    were synced here have no dirty pages left and cost little."""
    stop = threading.Event()
    seen = {d: set(names) for d, names in before.items()}

    def loop() -> None:
        while not stop.wait(interval_s):
            paths, after = new_files(root, seen)
            for d in after:
                seen[d] |= after[d]
            for path in paths:
                if stop.is_set():
                    return
                _fsync_if_present(path)

    thread = threading.Thread(target=loop, name="lake-early-writeback", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _fsync_if_present(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # a concurrent gc may remove garbage meanwhile
        fsync_path(path)


def fsync_ref(root: str, stored_ref: str, kind: str = "branch") -> None:
    """fsync a branch or tag ref file and its directories."""
    ref_dir = os.path.join(root, "refs", f"{kind}.{stored_ref}")
    for path in (os.path.join(ref_dir, "ref.json"), ref_dir, os.path.join(root, "refs")):
        with contextlib.suppress(FileNotFoundError):
            fsync_path(path)


def fsync_tree(root: str) -> None:
    """fsync every file and directory under ``root`` (a freshly created lake, before it is renamed
    into place)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fsync_path(os.path.join(dirpath, name))
        fsync_path(dirpath)
