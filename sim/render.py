"""Offscreen rendering for every robot-rl world: backend choice and one reusable camera renderer.

Backend. MuJoCo reads ``MUJOCO_GL`` once, when ``mujoco`` is first imported, so this module must
be imported before ``mujoco`` (``import sim`` does that). If ``MUJOCO_GL`` is unset we pick:

1. ``egl`` when ``libEGL`` is on the system (headless; Mesa llvmpipe on a CPU-only machine),
2. ``osmesa`` when only ``libOSMesa`` is there,
3. otherwise rendering is switched off (``MUJOCO_GL=disabled``) so that state-only use still
   works, and creating a :class:`CameraRenderer` raises :class:`RenderBackendError` naming the
   missing system library and the Debian/Ubuntu package that provides it.

A value the user set is always respected. The choice cannot change later in the process: PyOpenGL
binds its platform on first use. Software rendering (Mesa llvmpipe) is made single-threaded per
process (``LP_NUM_THREADS=0`` unless set): faster at small images, and one core per worker.

Renderer. :class:`CameraRenderer` owns exactly one ``mujoco.Renderer`` (one GL context) per
environment and renders any number of cameras through it, each into a fresh ``uint8 (H, W, 3)``
array. Cameras are either named MJCF cameras or free cameras described by a :class:`FreeCamera`
(look-at point, distance, azimuth, elevation), so wrapped third-party scenes can be framed without
editing their XML. Site groups listed in ``hidden_site_groups`` are never drawn (goal markers).
"""

from __future__ import annotations

import atexit
import ctypes.util
import os
import sys
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_DEBIAN_HINTS = {
    "egl": "apt-get install libegl1 libgl1-mesa-dri",
    "osmesa": "apt-get install libosmesa6",
}


class RenderBackendError(RuntimeError):
    """No working offscreen OpenGL backend; the message says which library to install."""


def _has_library(name: str) -> bool:
    return ctypes.util.find_library(name) is not None


def choose_backend() -> str:
    """Set ``MUJOCO_GL`` (if unset) to the first usable backend and return its value.

    Must run before ``mujoco`` is imported; ``sim/__init__.py`` calls it first thing.
    """
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    if chosen:
        return chosen
    if "mujoco" in sys.modules:
        # Too late to choose: mujoco already picked its default (glfw, needs a display).
        return ""
    if _has_library("EGL"):
        chosen = "egl"
    elif _has_library("OSMesa"):
        chosen = "osmesa"
    else:
        chosen = "disabled"
    os.environ["MUJOCO_GL"] = chosen
    return chosen


BACKEND = choose_backend()

# Mesa's llvmpipe (the software renderer behind EGL/OSMesa on a machine without a GPU) rasterizes on
# as many threads as there are cores by default. At robot-learning image sizes that hand-off costs
# more than it gains: one 64x64 tabletop step+render runs 1.27x faster single-threaded (128x128:
# 1.15x; 256x256: the same) and uses exactly one core, so parallel workers no longer fight over the
# cores (``benchmarks/collect.py``). llvmpipe reads this when its first context is made; a value the
# user set wins, and it has no effect on a GPU's EGL.
LP_NUM_THREADS_DEFAULT = "0"
os.environ.setdefault("LP_NUM_THREADS", LP_NUM_THREADS_DEFAULT)


def _preload_triton() -> None:
    """Load Triton (PyTorch's compiler, bundled with its own LLVM) before Mesa's llvmpipe creates a GL
    context. Importing Triton *after* a software-rendered EGL/OSMesa context exists crashes the process
    (segmentation fault), and torchvision and ``torch._dynamo`` import it; loaded first, both work."""
    import importlib.util

    if BACKEND in ("egl", "osmesa") and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


_preload_triton()

import mujoco  # noqa: E402  (must follow choose_backend)
import numpy as np  # noqa: E402


def _backend_error(cause: BaseException | None) -> RenderBackendError:
    backend = os.environ.get("MUJOCO_GL", "")
    if backend in ("", "glfw") and "DISPLAY" not in os.environ:
        advice = (
            "mujoco was imported before `sim` with MUJOCO_GL unset, so it chose glfw, which needs "
            "a display. Import `sim` first or run with MUJOCO_GL=egl."
        )
    elif backend == "disabled":
        advice = (
            "Neither libEGL nor libOSMesa was found. On Debian/Ubuntu install one of them: "
            f"`{_DEBIAN_HINTS['egl']}` (then MUJOCO_GL=egl) or `{_DEBIAN_HINTS['osmesa']}` "
            "(then MUJOCO_GL=osmesa)."
        )
    elif backend == "egl":
        advice = (
            "EGL could not create an offscreen context. Check that libEGL and a Mesa driver are "
            f"installed (`{_DEBIAN_HINTS['egl']}`), or fall back to software OSMesa: "
            f"`{_DEBIAN_HINTS['osmesa']}` and run with MUJOCO_GL=osmesa."
        )
    elif backend == "osmesa":
        advice = (
            f"OSMesa could not create a context. Install libOSMesa (`{_DEBIAN_HINTS['osmesa']}`) "
            f"or use EGL (`{_DEBIAN_HINTS['egl']}`, MUJOCO_GL=egl)."
        )
    else:
        advice = f"MUJOCO_GL={backend!r}; use MUJOCO_GL=egl (headless) or MUJOCO_GL=osmesa."
    return RenderBackendError(f"offscreen rendering failed ({cause!r}). {advice}")


@dataclass(frozen=True)
class FreeCamera:
    """A camera not in the MJCF, placed by orbit parameters around a look-at point (metres, deg)."""

    lookat: tuple[float, float, float]
    distance: float
    azimuth: float
    elevation: float

    def __post_init__(self) -> None:
        if self.distance <= 0:
            raise ValueError(f"FreeCamera.distance must be > 0, got {self.distance}")
        if len(self.lookat) != 3:
            raise ValueError(f"FreeCamera.lookat must have 3 entries, got {self.lookat}")

    def to_mjv(self) -> mujoco.MjvCamera:
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        cam.lookat[:] = self.lookat
        cam.distance = self.distance
        cam.azimuth = self.azimuth
        cam.elevation = self.elevation
        return cam


CameraSpec = str | FreeCamera
"""A named MJCF camera or a :class:`FreeCamera`."""

_LIVE_RENDERERS: weakref.WeakSet[CameraRenderer] = weakref.WeakSet()


def _close_live_renderers() -> None:
    for renderer in list(_LIVE_RENDERERS):
        renderer.close()


def _register_exit_hook() -> None:
    # (Re-)registered each time a renderer is made, hence after mujoco.egl registers its own display
    # teardown and after any library imported since then registered one (dm_control, which OGBench
    # imports, does); atexit runs hooks last-in first-out, so contexts are freed while the display
    # still exists (otherwise Renderer.__del__ prints EGL errors at interpreter exit).
    atexit.unregister(_close_live_renderers)
    atexit.register(_close_live_renderers)


class CameraRenderer:
    """Renders named cameras of one MuJoCo model through a single, reused ``mujoco.Renderer``.

    Args:
        model: the model to render; its offscreen buffer is enlarged if smaller than the image.
        cameras: camera name -> :class:`CameraSpec` (an MJCF camera name or a FreeCamera).
        height, width: image size in pixels.
        hidden_site_groups: site groups never drawn (e.g. goal markers that would leak the goal).
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        cameras: Mapping[str, CameraSpec],
        height: int = 64,
        width: int = 64,
        hidden_site_groups: Sequence[int] = (),
    ) -> None:
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got height={height}, width={width}")
        if not cameras:
            raise ValueError("CameraRenderer needs at least one camera")
        self.height, self.width = height, width
        self._cameras: dict[str, str | mujoco.MjvCamera] = {}
        for name, spec in cameras.items():
            if isinstance(spec, FreeCamera):
                self._cameras[name] = spec.to_mjv()
            else:
                if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, spec) < 0:
                    known = [model.camera(i).name for i in range(model.ncam)]
                    raise KeyError(f"camera {spec!r} is not in the model; it has {known}")
                self._cameras[name] = spec
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)
        self.scene_option = mujoco.MjvOption()
        for group in hidden_site_groups:
            self.scene_option.sitegroup[group] = 0
        try:
            self._renderer: mujoco.Renderer | None = mujoco.Renderer(model, height, width)
        except Exception as exc:  # the GL stack reports failures with assorted exception types
            raise _backend_error(exc) from exc
        _register_exit_hook()
        _LIVE_RENDERERS.add(self)

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(self._cameras)

    def render(self, data: mujoco.MjData, camera: str) -> np.ndarray:
        """Render one camera for the current ``data``; returns a new ``uint8 (H, W, 3)`` array."""
        if self._renderer is None:
            raise RuntimeError("CameraRenderer was closed")
        if camera not in self._cameras:
            raise KeyError(f"unknown camera {camera!r}; this renderer has {list(self._cameras)}")
        self._renderer.update_scene(data, camera=self._cameras[camera], scene_option=self.scene_option)
        return self._renderer.render()

    def render_all(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        """Render every camera: ``{camera_name: uint8 (H, W, 3)}``."""
        return {name: self.render(data, name) for name in self._cameras}

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        _LIVE_RENDERERS.discard(self)
