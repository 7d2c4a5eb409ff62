"""Copy a whole lake, every branch, tag and snapshot, between local storage and S3 (either way).

Icechunk 1.x has no repository copy, so this copies the repository's objects byte for byte; the
copy has the same snapshot ids, refs and history. The objects are the same on every backend:

    <lake>/                      local directory, or s3://bucket/prefix/
        refs/branch.<name>/ref.json, refs/tag.<name>/ref.json   (copied last)
        snapshots/<id>  manifests/<id>  transactions/<id>  chunks/<id>  config.yaml (if any)

Local-only files (the commit lock, staging branches of local writers) are not copied. The
destination must not exist or be empty: a copy never merges into or overwrites a repository.
Refs are read before anything else and written after everything else, so a writer committing to
the source meanwhile cannot leave the copy with a ref whose snapshot is missing; a copy that
stops half-way leaves a destination without refs (not a lake), which you delete and copy again.
Credentials for S3 come from the AWS chain (env, profile, ~/.aws), as for the lake itself.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from data_lake.lake import STAGING_PREFIX, Lake, LakeError
from data_lake.storage import LOCK_NAME, Location, fsync_path, fsync_tree, parse_uri, s3_endpoint

COPY_THREADS = 8


@dataclasses.dataclass(frozen=True)
class CopyResult:
    src: str
    dst: str
    objects: int
    bytes: int
    refs: dict[str, str]  # "branch.<name>" / "tag.<name>" -> snapshot id, as in the copy

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _skipped(key: str) -> bool:
    """Keys that belong to one machine's writers, not to the repository."""
    return key == LOCK_NAME or key.startswith(f"refs/branch.{STAGING_PREFIX}") or key.startswith(".")


def _is_ref(key: str) -> bool:
    return key.startswith("refs/")


class _Objects(Protocol):
    def keys(self) -> Iterator[str]: ...
    def get(self, key: str) -> bytes: ...
    def put(self, key: str, data: bytes) -> None: ...


class _LocalObjects:
    def __init__(self, root: str):
        self.root = root

    def keys(self) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                yield os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")

    def get(self, key: str) -> bytes:
        return Path(self.root, key).read_bytes()

    def put(self, key: str, data: bytes) -> None:
        path = Path(self.root, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class _S3Objects:
    def __init__(self, loc: Location):
        try:
            import boto3
        except ImportError as e:  # pragma: no cover - boto3 ships with the dev pins
            raise LakeError("copying a lake to or from S3 needs boto3: pip install boto3") from e
        region = loc.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        # credentials: boto3's default chain (env, AWS_PROFILE, ~/.aws, instance role), never arguments
        self.client = boto3.client("s3", endpoint_url=s3_endpoint(loc), region_name=region)
        self.bucket, _, prefix = loc.path.partition("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.loc = loc

    def keys(self) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][len(self.prefix) :]

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read())

    def put(self, key: str, data: bytes) -> None:
        # If-None-Match: never overwrite an object someone else wrote meanwhile
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, IfNoneMatch="*")


def _objects(loc: Location) -> _Objects:
    return _LocalObjects(loc.path) if loc.scheme == "file" else _S3Objects(loc)


@contextlib.contextmanager
def _s3_errors(what: str, loc: Location) -> Iterator[None]:
    """Turn a botocore error into one LakeError line naming the bucket and what to do."""
    try:
        yield
    except Exception as e:
        if not type(e).__module__.startswith("botocore") or loc.scheme != "s3":
            raise
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if type(e).__name__ == "NoCredentialsError":
            hint = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        elif "NoSuchBucket" in text:
            hint = f"create bucket {loc.bucket!r} first"
        elif any(w in text for w in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403")):
            hint = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket's policy"
        else:
            hint = "check the endpoint (?endpoint_url=... or AWS_ENDPOINT_URL) and the network"
        raise LakeError(f"could not {what} {loc.uri} (bucket {loc.bucket!r}): {text}; {hint}") from e


def copy_lake(src: str | os.PathLike[str], dst: str | os.PathLike[str], threads: int = COPY_THREADS) -> CopyResult:
    """Copy the lake at ``src`` to ``dst`` (a local path or s3:// URI that is absent or empty)."""
    sloc, dloc = parse_uri(src), parse_uri(dst)
    for loc in (sloc, dloc):
        if loc.scheme not in ("file", "s3"):
            raise LakeError(f"lake copy works between local paths and s3:// URIs, not {loc.scheme}:// ({loc.uri})")
    if sloc.scheme == dloc.scheme == "file" and Path(sloc.path) == Path(dloc.path):
        raise LakeError(f"source and destination are the same directory: {sloc.path}")
    expected = _refs(Lake.open(src))  # checks that it is a lake; the refs the copy must reproduce
    source = _objects(sloc)
    with _s3_errors("read", sloc):
        keys = [k for k in source.keys() if not _skipped(k)]
        refs = {k: source.get(k) for k in keys if _is_ref(k)}  # read first: see the module docstring
    data_keys = [k for k in keys if not _is_ref(k)]
    if dloc.scheme == "file":
        with _s3_errors("read", sloc):
            return _copy_to_local(sloc, dloc, source, data_keys, refs, expected, threads)
    dest = _objects(dloc)
    with _s3_errors("write", dloc):
        if next(iter(dest.keys()), None) is not None:
            raise LakeError(f"{dloc.uri} is not empty; lake copy only writes to a new, empty destination")
        nbytes = _transfer(source, dest, data_keys, threads)
        for k, v in refs.items():
            dest.put(k, v)
    return _checked(sloc, dloc, len(data_keys) + len(refs), nbytes + sum(map(len, refs.values())), expected)


def _copy_to_local(
    sloc: Location,
    dloc: Location,
    source: _Objects,
    data_keys: list[str],
    refs: dict[str, bytes],
    expected: dict[str, str],
    threads: int,
) -> CopyResult:
    """Write into a hidden sibling directory, then rename it into place (all or nothing)."""
    p = Path(dloc.path)
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise LakeError(f"{dloc.path} exists and is not an empty directory; lake copy only writes to a new path")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f".{p.name}.copying-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        dest = _LocalObjects(str(tmp))
        nbytes = _transfer(source, dest, data_keys, threads)
        for k, v in refs.items():
            dest.put(k, v)
        fsync_tree(str(tmp))
        if p.exists():
            p.rmdir()  # empty (checked above); rename cannot replace it on every platform
        os.rename(tmp, p)
        fsync_path(str(p.parent))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return _checked(sloc, dloc, len(data_keys) + len(refs), nbytes + sum(map(len, refs.values())), expected)


def _transfer(source: _Objects, dest: _Objects, keys: list[str], threads: int) -> int:
    def one(key: str) -> int:
        data = source.get(key)
        dest.put(key, data)
        return len(data)

    with cf.ThreadPoolExecutor(max(1, threads)) as pool:
        return sum(pool.map(one, keys))


def _refs(lake: Lake) -> dict[str, str]:
    repo = lake.repo
    out = {f"branch.{b}": repo.lookup_branch(b) for b in repo.list_branches() if not b.startswith(STAGING_PREFIX)}
    out.update({f"tag.{t}": repo.lookup_tag(t) for t in repo.list_tags()})
    return out


def _checked(sloc: Location, dloc: Location, objects: int, nbytes: int, expected: dict[str, str]) -> CopyResult:
    """Open the copy and check that every ref the source had when the copy began points at the
    same snapshot there (refs moved by writers meanwhile are copied as they were read)."""
    got = _refs(Lake.open(dloc.uri))
    missing = {k: v for k, v in expected.items() if k not in got}
    if missing:
        raise LakeError(f"the copy at {dloc.uri} lacks refs {sorted(missing)} of {sloc.uri}; delete it and copy again")
    return CopyResult(sloc.uri, dloc.uri, objects, nbytes, got)
