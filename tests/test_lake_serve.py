"""`robot-rl lake serve`: every page over a real lake (Flask's test client), a real headless
browser playing an episode's video, and the lake unchanged after browsing.

Screenshots for the docs: ``ROBOT_RL_SCREENSHOTS=docs/img pytest tests/test_lake_serve.py`` writes
``docs/img/serve_*.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from data_lake.lake import Lake
from robot_rl.cli import main
from robot_rl.serve import create_app
from robot_rl.serve.app import png_bytes, upscale
from tasks.collect import CollectConfig, collect

TASK = "tabletop/reach_red"


def _collect(uri: str, seed: int) -> None:
    cfg = CollectConfig(
        task=TASK,
        episodes=2,
        lake=uri,
        policy="noisy",
        cameras=("front",),
        image_size=16,
        max_steps=8,
        progress=False,
        seed=seed,
    )
    collect(cfg)


@pytest.fixture(scope="module")
def lake_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two episodes, tag v1 and branch finetune/run1 there, two more and a label set (task@user) on main."""
    uri = str(tmp_path_factory.mktemp("serve") / "lake")
    _collect(uri, seed=0)
    lake = Lake.open(uri)
    lake.tag("v1")
    lake.branch("finetune/run1", "v1")
    _collect(uri, seed=1)
    lake.label(TASK, lambda seg: seg.steps["reward"] > -0.05, source="user", provenance={"detector_id": "by-hand"})
    return uri


@pytest.fixture(scope="module")
def app(lake_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return create_app(lake_uri, tmp_path_factory.mktemp("cache"))


def _state(uri: str) -> dict[str, Any]:
    lake = Lake.open(uri)
    return {
        "branches": {b: lake.resolve(b) for b in lake.branches()},
        "tags": {t: lake.resolve(t) for t in lake.tags()},
        "log": [c.snapshot_id for c in lake.log("main")],
        "files": sorted((str(p), p.stat().st_size) for p in Path(uri).rglob("*") if p.is_file()),
    }


def _ids(uri: str, ref: str) -> list[str]:
    return Lake.open(uri).checkout(ref).episode_ids()


# ---------------------------------------------------------------------------- helpers
def test_upscale_makes_even_sizes_and_png_is_valid() -> None:
    frames = np.random.default_rng(0).integers(0, 255, (3, 15, 9, 3), dtype=np.uint8)
    out = upscale(frames, 128)
    assert out.shape[1] % 2 == 0 and out.shape[2] % 2 == 0 and min(out.shape[1:3]) >= 128
    assert np.array_equal(out[:, 0, 0], frames[:, 0, 0])  # nearest, not blurred
    data = png_bytes(frames[0])
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" in data[-12:]


# ---------------------------------------------------------------------------- test client
def test_log_page_lists_branches_tags_and_commits(app: Any, lake_uri: str) -> None:
    page = app.test_client().get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    lake = Lake.open(lake_uri)
    assert "main" in html and "v1" in html and lake.resolve("main") in html and lake.resolve("v1") in html
    for c in lake.log("main"):
        assert c.snapshot_id in html
    assert "collect tabletop/reach_red: 2 episodes" in html and "label tabletop/reach_red@user" in html


def test_ref_page_lists_episodes_with_thumbnails_and_filters(app: Any, lake_uri: str) -> None:
    client = app.test_client()
    main_ids, v1_ids = _ids(lake_uri, "main"), _ids(lake_uri, "v1")
    html = client.get("/ref/main").get_data(as_text=True)
    assert all(e[:12] in html for e in main_ids) and html.count('class="episode"') == 4
    assert client.get("/ref/v1").get_data(as_text=True).count('class="episode"') == 2
    # source filter (substring): the seed=1 episodes are the ones added after v1
    html = client.get("/ref/main?source=seed=1").get_data(as_text=True)
    assert html.count('class="episode"') == 2 and not any(e[:12] in html for e in v1_ids)
    recs = Lake.open(lake_uri).checkout("main").episodes()
    n_ok = sum(r.success is True for r in recs)
    assert client.get("/ref/main?success=true").get_data(as_text=True).count('class="episode"') == n_ok
    assert client.get("/ref/main?success=false").get_data(as_text=True).count('class="episode"') == 4 - n_ok
    assert client.get("/ref/main?task=other/task").get_data(as_text=True).count('class="episode"') == 0
    assert client.get("/ref/main?success=maybe").status_code == 400
    snap = Lake.open(lake_uri).resolve("main")
    thumb = client.get(f"/thumb/{main_ids[0]}.png?ref={snap}&cam=front")
    assert thumb.status_code == 200 and thumb.mimetype == "image/png" and thumb.data[:4] == b"\x89PNG"


def test_episode_page_and_video_with_range(app: Any, lake_uri: str, tmp_path: Path) -> None:
    client = app.test_client()
    eid = _ids(lake_uri, "main")[0]
    html = client.get(f"/episode/{eid}?ref=main").get_data(as_text=True)
    assert eid in html and TASK in html and "<video" in html and "collect_seed" in html
    assert "tabletop/reach_red@user" in html and "by-hand" in html  # the label set and its provenance
    snap = Lake.open(lake_uri).resolve("main")
    full = client.get(f"/video/{eid}/front.mp4?ref={snap}")
    assert full.status_code == 200 and full.mimetype == "video/mp4" and len(full.data) > 100
    assert full.headers["Accept-Ranges"] == "bytes"
    part = client.get(f"/video/{eid}/front.mp4?ref={snap}", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.data == full.data[:100]
    assert part.headers["Content-Range"] == f"bytes 0-99/{len(full.data)}"
    (tmp_path / "v.mp4").write_bytes(full.data)
    with av.open(str(tmp_path / "v.mp4")) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 9 and frames[0].width == 128 and frames[0].height == 128


def test_diff_page_counts_added_and_removed(app: Any, lake_uri: str) -> None:
    client = app.test_client()
    added = sorted(set(_ids(lake_uri, "main")) - set(_ids(lake_uri, "v1")))
    html = client.get("/diff/v1/main").get_data(as_text=True)
    assert "<b>2</b> added, <b>0</b> removed" in html and all(e[:12] in html for e in added)
    html = client.get("/diff?a=main&b=v1").get_data(as_text=True)
    assert "<b>0</b> added, <b>2</b> removed" in html
    html = client.get("/diff?a=finetune/run1&b=main").get_data(as_text=True)
    assert "<b>2</b> added, <b>0</b> removed" in html


def test_refs_with_a_slash(app: Any, lake_uri: str) -> None:
    client = app.test_client()
    assert "/ref/finetune/run1" in client.get("/").get_data(as_text=True)
    assert client.get("/ref/finetune/run1").get_data(as_text=True).count('class="episode"') == 2
    html = client.get("/log?branch=finetune/run1").get_data(as_text=True)
    assert Lake.open(lake_uri).resolve("v1") in html and "seed=1" not in html


@pytest.mark.parametrize(
    "url, message",
    [
        ("/ref/no-such-ref", "unknown ref 'no-such-ref'"),
        ("/episode/abc123?ref=main", "episode abc123 is not in snapshot"),
        ("/episode/abc123?ref=nope", "unknown ref 'nope'"),
        ("/diff/v1/nope", "unknown ref 'nope'"),
        ("/log?branch=nope", "unknown branch 'nope'"),
        ("/no/such/page", "Not Found"),
    ],
)
def test_unknown_things_are_404_pages_without_traceback(app: Any, url: str, message: str) -> None:
    page = app.test_client().get(url)
    html = unescape(page.get_data(as_text=True))
    assert page.status_code == 404 and message in html, html
    assert "Traceback" not in html and 'File "' not in html


def test_unknown_camera_is_404(app: Any, lake_uri: str) -> None:
    eid = _ids(lake_uri, "main")[0]
    page = app.test_client().get(f"/video/{eid}/side.mp4?ref=main")
    assert page.status_code == 404 and "has no camera 'side'" in unescape(page.get_data(as_text=True))


# ---------------------------------------------------------------------------- command line
def test_remote_host_needs_allow_remote(lake_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["lake", "serve", "--lake", lake_uri, "--host", "0.0.0.0", "--port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "--allow-remote" in err[0]


def test_missing_lake_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["lake", "serve", "--lake", str(tmp_path / "none"), "--port", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no lake at" in err[0]


PARENT_SIGINT = {  # what the server inherits: a parent's ignored disposition and blocked mask survive exec
    "default": None,
    "ignored": lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    "blocked": lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}),
}


@pytest.mark.parametrize("parent", list(PARENT_SIGINT))
def test_serve_prints_its_url_serves_and_stops_on_ctrl_c(lake_uri: str, tmp_path: Path, parent: str) -> None:
    # `robot-rl lake serve`, with every thread's stack dumped on SIGUSR1 (if it hangs after Ctrl-C, the
    # failure shows where the process waits: it showed a server deaf to SIGINT before serve.py reset it)
    dump = "import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
    dump += "from robot_rl.cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", dump, "lake", "serve", "--lake", lake_uri, "--port", "0"]
    cmd += ["--cache", str(tmp_path / "cache")]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=PARENT_SIGINT[parent]
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        with urllib.request.urlopen(url.group(0) + "ref/v1", timeout=30) as r:
            assert r.status == 200 and b'class="episode"' in r.read()
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the server did not stop within 60 s of Ctrl-C; its threads:\n{err[-8000:]}")
        assert proc.returncode == 0 and "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------- a real browser
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def server(lake_uri: str, tmp_path: Path) -> Iterator[str]:
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, create_app(lake_uri, tmp_path / "cache"), threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        thread.join(10)


def _shot(page: Any, name: str) -> None:
    out = os.environ.get("ROBOT_RL_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / f"serve_{name}.png"), full_page=True)


@pytest.mark.timeout(120)
def test_browser_session_plays_video_and_writes_nothing(lake_uri: str, server: str) -> None:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip("Debian's chromium is not installed; .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    before = _state(lake_uri)
    args = ["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.set_default_timeout(10_000)
            page.goto(server + "/")
            assert page.locator("#log tr").count() == 1 + len(before["log"])
            assert page.locator("#branches").inner_text().count("main") >= 1
            _shot(page, "log")

            page.click("#branches a:text('main') >> nth=0")  # the branch link: its log
            page.goto(server + "/ref/main")
            assert page.locator("tr.episode").count() == 4
            page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            page.fill("input[name=source]", "seed=1")
            page.click("#filters button")
            page.wait_for_url(lambda url: "source=seed" in url)
            assert page.locator("tr.episode").count() == 2
            _shot(page, "episodes")

            page.click("tr.episode >> nth=0 >> td.id a")
            page.wait_for_selector("video")
            playing = page.evaluate(
                """async () => {
                    const v = document.querySelector('video');
                    v.muted = true;
                    for (let i = 0; i < 100 && !(v.readyState >= 2 && v.duration > 0); i++)
                        await new Promise(r => setTimeout(r, 100));
                    await v.play();
                    await new Promise(r => setTimeout(r, 300));
                    return {ready: v.readyState, duration: v.duration, time: v.currentTime,
                            width: v.videoWidth, error: v.error && v.error.message};
                }"""
            )
            assert playing["ready"] >= 2 and playing["duration"] > 0 and playing["width"] == 128, playing
            assert playing["time"] > 0, playing
            _shot(page, "episode")

            page.goto(server + "/")
            page.fill("#diff input[name=a]", "v1")
            page.fill("#diff input[name=b]", "main")
            page.click("#diff button")
            assert "2 added, 0 removed" in page.locator("#counts").inner_text()
            _shot(page, "diff")

            resp = page.goto(server + "/ref/no-such-ref")
            assert resp is not None and resp.status == 404
            assert "unknown ref 'no-such-ref'" in page.locator("#error").inner_text()
        finally:
            browser.close()
    assert _state(lake_uri) == before
