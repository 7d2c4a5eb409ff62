"""A read-only web page over the lake: branches, tags and the log; a snapshot's episodes with
thumbnails and filters; one episode with a video per camera and its labels; the diff of two refs.

Routes (server-rendered HTML; no JavaScript build, no script at all)::

    /                               branches, tags, the log of ?branch= (default main), a diff form
    /ref/<ref>                      the episodes of a snapshot; ?task= &source= (substring) &success=
                                    (true|false|none) &page=
    /episode/<id>?ref=<ref>         record, metadata, label sets and one <video> per camera
    /diff/<a>/<b>, /diff?a=&b=      episodes added and removed from a to b (by episode id)
    /thumb/<id>.png?ref=&cam=       a strip of a few frames (PNG)
    /video/<id>/<cam>.mp4?ref=      the camera stream as H.264 mp4 (mpeg4 without libx264), with Range

Reading only: every page resolves its ref to a snapshot id and reads a read-only session pinned to
it (``Lake.resolve`` + ``readonly_session``); nothing here commits, tags or branches. Media pages
take the snapshot id, never a branch name, so they are immutable: thumbnails and videos are encoded
once and cached on disk under ``<cache_dir>/<snapshot id>/<episode id>/`` (written to a temporary
name, then renamed). Unknown refs, episodes and cameras are 404 pages with a message; any other
error is a 500 page with the message only (the traceback goes to the server's log).
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, abort, render_template, request, send_file
from jinja2 import DictLoader
from werkzeug.exceptions import HTTPException

from data_lake.lake import EpisodeRecord, Lake, LakeView, UnknownRefError

PAGE_SIZE = 50
THUMB_FRAMES = 6
THUMB_SIDE = 48  # px: each thumbnail frame is upscaled (nearest) to at least this
VIDEO_SIDE = 128  # px: small frames are upscaled (nearest) to at least this before encoding
DEFAULT_FPS = 10.0
LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/robot-rl/serve`` (default ``~/.cache/robot-rl/serve``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "robot-rl" / "serve"


def is_local_host(host: str) -> bool:
    return host in LOCAL_HOSTS


class NotFound(LookupError):
    """An unknown ref, episode or camera: rendered as a 404 page with this message."""


# ---------------------------------------------------------------------------- media helpers
def upscale(frames: np.ndarray, min_side: int) -> np.ndarray:
    """(T, H, W, 3) uint8 frames scaled up by an integer factor (nearest) so that the short side is
    at least ``min_side``, then padded (edge) to even height and width, as yuv420p needs."""
    _, h, w, _ = frames.shape
    k = max(1, math.ceil(min_side / min(h, w)))
    out = frames.repeat(k, axis=1).repeat(k, axis=2) if k > 1 else frames
    ph, pw = out.shape[1] % 2, out.shape[2] % 2
    if ph or pw:
        out = np.pad(out, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return np.ascontiguousarray(out)


def png_bytes(image: np.ndarray) -> bytes:
    """A (H, W, 3) uint8 image as PNG (8-bit RGB, no filtering)."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def thumb_strip(frames: np.ndarray, n: int = THUMB_FRAMES, side: int = THUMB_SIDE) -> np.ndarray:
    """``n`` evenly spaced frames of (T, H, W, 3), upscaled, side by side with a 2 px gap."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int))
    tiles = upscale(frames[idx], side)  # (n, h, w, 3)
    gap = np.full((tiles.shape[1], 2, 3), 255, np.uint8)
    parts: list[np.ndarray] = []
    for t in tiles:
        parts += [t, gap]
    return np.concatenate(parts[:-1], axis=1)


def video_codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def encode_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    """Encode (T, H, W, 3) uint8 frames (even H and W) to ``path`` as mp4, yuv420p."""
    import av

    codec = video_codec()
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream(codec, rate=max(1, round(fps)))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def episode_fps(timestamp_ns: np.ndarray | None) -> float:
    """Frames per second from the step timestamps (their median spacing), else ``DEFAULT_FPS``."""
    if timestamp_ns is None or len(timestamp_ns) < 2:
        return DEFAULT_FPS
    dt = float(np.median(np.diff(timestamp_ns.astype(np.float64)))) / 1e9
    return min(60.0, max(1.0, 1.0 / dt)) if dt > 0 else DEFAULT_FPS


# ---------------------------------------------------------------------------- the lake, read only
class LakeReader:
    """Resolves refs and keeps a few pinned views (by snapshot id: they never change)."""

    def __init__(self, lake_uri: str, cache_dir: Path, views: int = 8):
        self.lake = Lake.open(lake_uri)
        self.uri = lake_uri
        self.cache_dir = cache_dir
        self._views: OrderedDict[str, LakeView] = OrderedDict()
        self._max_views = views
        self._lock = threading.Lock()
        self._encoding: dict[Path, threading.Lock] = {}

    def view(self, ref: str) -> LakeView:
        try:
            snap = self.lake.resolve(ref)
        except UnknownRefError as e:
            raise NotFound(str(e)) from e
        with self._lock:
            v = self._views.pop(snap, None)
            if v is None:
                v = LakeView(self.lake.repo.readonly_session(snapshot_id=snap), snap, ref)
            self._views[snap] = v
            while len(self._views) > self._max_views:
                self._views.popitem(last=False)
        return v

    def record(self, view: LakeView, episode_id: str) -> EpisodeRecord:
        rec = next((r for r in view.episodes() if r.episode_id == episode_id), None)
        if rec is None:
            raise NotFound(f"episode {episode_id} is not in snapshot {view.snapshot_id} (ref {view.ref!r})")
        return rec

    def frames(self, view: LakeView, episode_id: str, cam: str) -> tuple[np.ndarray, float]:
        self.record(view, episode_id)
        ep = view.read_episode(episode_id)
        key = f"images/{cam}"
        if key not in ep.steps:
            raise NotFound(f"episode {episode_id} has no camera {cam!r}; cameras: {ep.cameras}")
        return ep.steps[key], episode_fps(ep.steps.get("timestamp_ns"))

    def cached(self, view: LakeView, episode_id: str, name: str, make: Any) -> Path:
        """``<cache>/<snapshot>/<episode>/<name>``, made once by ``make(tmp_path)``."""
        if not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise NotFound(f"bad media name {name!r}")
        path = self.cache_dir / view.snapshot_id / episode_id / name
        with self._lock:
            lock = self._encoding.setdefault(path, threading.Lock())
        with lock:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                try:
                    make(tmp)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
        return path


def _cameras(view: LakeView) -> list[str]:
    step = (view.schema or {}).get("step", {})
    return sorted(k.split("/", 1)[1] for k in step if k.startswith("images/"))


def _success_text(s: bool | None) -> str:
    return "-" if s is None else ("yes" if s else "no")


# ---------------------------------------------------------------------------- templates
BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{% block title %}lake{% endblock %} · robot-rl</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em 2em;color:#222}
a{color:#0645ad;text-decoration:none} a:hover{text-decoration:underline}
table{border-collapse:collapse;margin:.5em 0} td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top} th{background:#f4f4f4} code,.id{font-family:ui-monospace,monospace;font-size:12px}
img.thumb{image-rendering:pixelated;height:48px;display:block} .yes{color:#17803d} .no{color:#b3261e}
form.filters label{margin-right:1em} .msg{background:#fdecea;border:1px solid #f5c2c0;padding:.8em;max-width:70em}
pre{background:#f7f7f7;padding:.6em;max-width:70em;overflow:auto} video{image-rendering:pixelated;margin:0 1em 1em 0}
nav{margin-bottom:1em;color:#666}
</style></head><body>
<nav><a href="{{ url_for('index') }}">lake</a> · <code>{{ uri }}</code></nav>
{% block body %}{% endblock %}
</body></html>"""

INDEX = """{% extends "base.html" %}{% block title %}log{% endblock %}{% block body %}
<h1>Lake</h1>
<h2>Branches</h2>
<table id="branches"><tr><th>branch</th><th>snapshot</th><th>episodes</th><th>last commit</th></tr>
{% for r in branches %}<tr><td><a href="{{ url_for('log_page', branch=r.name) }}">{{ r.name }}</a></td>
<td class="id"><a href="{{ url_for('ref_page', ref=r.name) }}">{{ r.snapshot_id }}</a></td>
<td>{{ r.episodes }}</td><td>{{ r.message }}</td></tr>{% endfor %}</table>
<h2>Tags</h2>
{% if tags %}<table id="tags"><tr><th>tag</th><th>snapshot</th><th>episodes</th><th>message</th></tr>
{% for r in tags %}<tr><td><a href="{{ url_for('ref_page', ref=r.name) }}">{{ r.name }}</a></td>
<td class="id">{{ r.snapshot_id }}</td><td>{{ r.episodes }}</td><td>{{ r.message }}</td></tr>{% endfor %}</table>
{% else %}<p>no tags</p>{% endif %}
<h2>Compare two refs</h2>
<form id="diff" action="{{ url_for('diff_query') }}" method="get">
<label>from <input name="a" value="{{ tags[-1].name if tags else branch }}" size="24"></label>
<label>to <input name="b" value="{{ branch }}" size="24"></label> <button type="submit">diff</button></form>
<h2>Log of <code>{{ branch }}</code></h2>
<table id="log"><tr><th>snapshot</th><th>written (UTC)</th><th>operation</th><th>+added</th><th>-removed</th>
<th>episodes</th><th>author</th><th>message</th></tr>
{% for c in log %}<tr><td class="id"><a href="{{ url_for('ref_page', ref=c.snapshot_id) }}">{{ c.snapshot_id }}</a></td>
<td>{{ c.written_at[:19].replace("T", " ") }}</td><td>{{ c.operation or "-" }}</td><td>{{ c.episodes_added }}</td>
<td>{{ c.episodes_removed }}</td><td>{{ c.episodes_total }}</td><td>{{ c.author }}</td><td>{{ c.message }}</td></tr>
{% endfor %}</table>
{% endblock %}"""

REF = """{% extends "base.html" %}{% block title %}{{ ref }}{% endblock %}{% block body %}
<h1>{{ ref }}</h1>
<p>snapshot <code>{{ view.snapshot_id }}</code> · {{ total }} episodes, {{ shown|length }} match{% if pages > 1 %}
 · page {{ page }} of {{ pages }}{% endif %}</p>
<form class="filters" id="filters" method="get" action="{{ url_for('ref_page', ref=ref) }}">
<label>task <select name="task"><option value="">(any)</option>
{% for t in tasks %}<option value="{{ t }}"{% if t == task %} selected{% endif %}>{{ t }}</option>{% endfor %}
</select></label>
<label>source contains <input name="source" value="{{ source }}" size="20"></label>
<label>success <select name="success">{% for v, text in [("", "(any)"), ("true", "yes"), ("false", "no"),
("none", "unknown")] %}<option value="{{ v }}"{% if v == success %} selected{% endif %}>{{ text }}</option>
{% endfor %}</select></label> <button type="submit">filter</button></form>
<table id="episodes"><tr><th>episode</th><th>task</th><th>success</th><th>length</th><th>source</th>
{% for cam in cameras %}<th>{{ cam }}</th>{% endfor %}</tr>
{% for r in rows %}<tr class="episode"><td class="id"><a href="{{ url_for('episode_page', episode_id=r.episode_id,
 ref=ref) }}">{{ r.episode_id[:12] }}</a></td><td>{{ r.task }}</td>
<td class="{{ 'yes' if r.success else 'no' if r.success is not none }}">{{ ok(r.success) }}</td>
<td>{{ r.length }}</td><td>{{ r.source }}</td>
{% for cam in cameras %}<td><a href="{{ url_for('episode_page', episode_id=r.episode_id, ref=ref) }}"><img
 class="thumb" loading="lazy" alt="{{ cam }} frames" src="{{ url_for('thumb', episode_id=r.episode_id,
 ref=view.snapshot_id, cam=cam) }}"></a></td>{% endfor %}</tr>{% endfor %}</table>
{% if pages > 1 %}<p>{% for p in range(1, pages + 1) %}{% if p == page %}<b>{{ p }}</b>{% else %}<a
 href="{{ url_for('ref_page', ref=ref, task=task, source=source, success=success, page=p) }}">{{ p }}</a>{% endif %}
{% endfor %}</p>{% endif %}
{% endblock %}"""

EPISODE = """{% extends "base.html" %}{% block title %}episode {{ rec.episode_id[:12] }}{% endblock %}
{% block body %}
<h1>Episode <code>{{ rec.episode_id[:12] }}</code></h1>
<p>in <a href="{{ url_for('ref_page', ref=ref) }}">{{ ref }}</a> (snapshot <code>{{ view.snapshot_id }}</code>)</p>
{% for cam in cameras %}<figure style="display:inline-block;margin:0"><video id="video-{{ cam }}" controls muted
 loop playsinline preload="auto" width="{{ width }}"
 src="{{ url_for('video', episode_id=rec.episode_id, cam=cam, ref=view.snapshot_id) }}"></video>
<figcaption>{{ cam }}</figcaption></figure>{% endfor %}
<h2>Record</h2>
<table id="record">{% for k, v in fields %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
<h2>Metadata</h2><pre id="metadata">{{ metadata }}</pre>
<h2>Label sets</h2>
{% if labels %}<table id="labels"><tr><th>key</th><th>task</th><th>source</th><th>true steps</th><th>first true</th>
<th>provenance</th></tr>
{% for l in labels %}<tr><td><code>{{ l.key }}</code></td><td>{{ l.task }}</td><td>{{ l.source }}</td>
<td>{{ l.true }} / {{ l.steps }}</td><td>{{ l.first }}</td><td><code>{{ l.provenance }}</code></td></tr>{% endfor %}
</table>{% else %}<p>no label sets</p>{% endif %}
{% endblock %}"""

DIFF = """{% extends "base.html" %}{% block title %}diff{% endblock %}{% block body %}
<h1>Diff <code>{{ a }}</code> → <code>{{ b }}</code></h1>
<p>snapshots <code>{{ d["from"] }}</code> → <code>{{ d["to"] }}</code></p>
<p id="counts"><b>{{ added|length }}</b> added, <b>{{ removed|length }}</b> removed</p>
{% for title, ref, rows in [("Added", b, added), ("Removed", a, removed)] %}
<h2>{{ title }} ({{ rows|length }})</h2>
{% if rows %}<table class="diff-{{ title|lower }}"><tr><th>episode</th><th>task</th><th>success</th><th>length</th>
<th>source</th></tr>
{% for r in rows %}<tr><td class="id"><a href="{{ url_for('episode_page', episode_id=r.episode_id, ref=ref) }}">{{
 r.episode_id[:12] }}</a></td><td>{{ r.task }}</td><td>{{ ok(r.success) }}</td><td>{{ r.length }}</td>
<td>{{ r.source }}</td></tr>{% endfor %}</table>{% else %}<p>none</p>{% endif %}{% endfor %}
{% endblock %}"""

ERROR = """{% extends "base.html" %}{% block title %}{{ code }}{% endblock %}{% block body %}
<h1>{{ code }} {{ title }}</h1><p class="msg" id="error">{{ message }}</p>
<p><a href="{{ url_for('index') }}">back to the lake</a></p>{% endblock %}"""


# ---------------------------------------------------------------------------- the app
def create_app(lake_uri: str, cache_dir: str | os.PathLike[str] | None = None) -> Flask:
    """The web app over the lake at ``lake_uri`` (opened now: a missing lake fails here).
    Videos and thumbnails are cached under ``cache_dir`` (default :func:`default_cache_dir`)."""
    reader = LakeReader(lake_uri, Path(cache_dir) if cache_dir is not None else default_cache_dir())
    app = Flask(__name__)
    app.jinja_loader = DictLoader(
        {
            "base.html": BASE,
            "index.html": INDEX,
            "ref.html": REF,
            "episode.html": EPISODE,
            "diff.html": DIFF,
            "error.html": ERROR,
        }
    )
    app.extensions["robot_rl_lake"] = reader

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {"uri": reader.uri, "ok": _success_text}

    def error_page(code: int, title: str, message: str) -> tuple[str, int]:
        return render_template("error.html", code=code, title=title, message=message), code

    @app.errorhandler(NotFound)
    def _not_found(e: NotFound) -> tuple[str, int]:
        return error_page(404, "Not found", str(e))

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException) -> tuple[str, int]:
        return error_page(e.code or 500, e.name, e.description or "")

    @app.errorhandler(Exception)
    def _error(e: Exception) -> tuple[str, int]:
        app.logger.exception("error serving %s", request.path)
        return error_page(500, "Error", f"{type(e).__name__}: {e}")

    def refs(names: list[str]) -> list[dict[str, Any]]:
        out = []
        for name in names:
            head = reader.lake.log(name, limit=1)[0]
            out.append(
                {
                    "name": name,
                    "snapshot_id": head.snapshot_id,
                    "episodes": head.episodes_total,
                    "message": head.message,
                }
            )
        return out

    @app.get("/favicon.ico")
    def favicon() -> tuple[str, int]:
        return "", 204

    @app.get("/")
    def index() -> str:
        return log_page()

    @app.get("/log")
    def log_page() -> str:
        branch = request.args.get("branch", "main")
        branches = reader.lake.branches()
        if branch not in branches:
            raise NotFound(f"unknown branch {branch!r}; branches: {branches}")
        return render_template(
            "index.html",
            branches=refs(branches),
            tags=refs(reader.lake.tags()),
            branch=branch,
            log=reader.lake.log(branch, limit=500),
        )

    @app.get("/ref/<path:ref>")
    def ref_page(ref: str) -> str:
        view = reader.view(ref)
        recs = view.episodes()
        task = request.args.get("task", "")
        source = request.args.get("source", "")
        success = request.args.get("success", "")
        wanted = {"": None, "true": True, "false": False, "none": None}
        if success not in wanted:
            abort(400, f"success must be true, false or none, got {success!r}")
        shown = [
            r
            for r in recs
            if (not task or r.task == task)
            and (not source or source in r.source)
            and (not success or r.success is wanted[success])
        ]
        pages = max(1, math.ceil(len(shown) / PAGE_SIZE))
        page = min(max(1, request.args.get("page", 1, type=int) or 1), pages)
        return render_template(
            "ref.html",
            ref=ref,
            view=view,
            total=len(recs),
            shown=shown,
            rows=shown[(page - 1) * PAGE_SIZE : page * PAGE_SIZE],
            page=page,
            pages=pages,
            tasks=sorted({r.task for r in recs}),
            task=task,
            source=source,
            success=success,
            cameras=_cameras(view),
        )

    @app.get("/episode/<episode_id>")
    def episode_page(episode_id: str) -> str:
        ref = request.args.get("ref", "main")
        view = reader.view(ref)
        rec = reader.record(view, episode_id)
        seg = view.read_segment(rec.segment, fields=[])  # labels and goals only
        stored = {d["key"]: d for d in view.label_sets()}
        labels = []
        for key, values in sorted(seg.episode_labels(rec.index).items()):
            hits = np.flatnonzero(values)
            d = stored.get(key, {})
            labels.append(
                {
                    "key": key,
                    "task": d.get("task", key),
                    "source": d.get("source", ""),
                    "true": int(hits.size),
                    "steps": int(values.size),
                    "first": int(hits[0]) if hits.size else "-",
                    "provenance": json.dumps(d.get("provenance", {}), default=str, sort_keys=True),
                }
            )
        fields = [
            ("episode_id", rec.episode_id),
            ("task", rec.task),
            ("language", rec.language or "-"),
            ("success", _success_text(rec.success)),
            ("length", rec.length),
            ("source", rec.source),
            ("robot", rec.robot),
            ("created_at", rec.created_at),
            ("segment", f"{rec.segment} (episode {rec.index}, steps {rec.start}-{rec.stop})"),
            ("goals", ", ".join(rec.goal_keys) or "-"),
        ]
        return render_template(
            "episode.html",
            ref=ref,
            view=view,
            rec=rec,
            fields=fields,
            metadata=json.dumps(rec.metadata, indent=1, default=str, sort_keys=True),
            labels=labels,
            cameras=_cameras(view),
            width=320,
        )

    @app.get("/diff")
    def diff_query() -> str:
        a, b = request.args.get("a", ""), request.args.get("b", "")
        if not a or not b:
            abort(400, "give two refs: /diff?a=<ref>&b=<ref>")
        return diff_page(a, b)

    @app.get("/diff/<a>/<b>")
    def diff_page(a: str, b: str) -> str:
        va, vb = reader.view(a), reader.view(b)
        ia, ib = set(va.episode_ids()), set(vb.episode_ids())
        added = [r for r in vb.episodes() if r.episode_id not in ia]
        removed = [r for r in va.episodes() if r.episode_id not in ib]
        d = {"from": va.snapshot_id, "to": vb.snapshot_id}
        return render_template("diff.html", a=a, b=b, d=d, added=added, removed=removed)

    @app.get("/thumb/<episode_id>.png")
    def thumb(episode_id: str) -> Any:
        view = reader.view(request.args.get("ref", "main"))
        cam = request.args.get("cam", "")

        def make(tmp: Path) -> None:
            frames, _ = reader.frames(view, episode_id, cam)
            tmp.write_bytes(png_bytes(thumb_strip(frames)))

        reader.record(view, episode_id)
        path = reader.cached(view, episode_id, f"thumb-{cam}.png", make)
        return send_file(path, mimetype="image/png", conditional=True, max_age=3600)

    @app.get("/video/<episode_id>/<cam>.mp4")
    def video(episode_id: str, cam: str) -> Any:
        view = reader.view(request.args.get("ref", "main"))

        def make(tmp: Path) -> None:
            frames, fps = reader.frames(view, episode_id, cam)
            encode_mp4(upscale(frames, VIDEO_SIDE), tmp, fps)

        reader.record(view, episode_id)
        path = reader.cached(view, episode_id, f"{cam}.mp4", make)
        return send_file(path, mimetype="video/mp4", conditional=True, max_age=3600)

    return app
