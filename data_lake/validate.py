"""Episode validation and the lake schema.

Validation never fixes data: every problem becomes a :class:`Problem` with a reason code, the
field key, the step (when one step is to blame) and a sentence saying what was found and what
was expected. Reason codes:

    missing_field    a required step field is absent
    unknown_field    a step key the format does not define
    dtype            wrong dtype (e.g. float64 where float32 is stored)
    shape            ragged or inconsistent shapes; a field whose length differs from the action's
    image            an image that is not uint8 (T, H, W, 3), or a depth map that is not (T, H, W)
    non_finite       NaN or Inf in a float field
    timestamps       timestamps that do not strictly increase
    too_short        fewer than 2 steps
    flags            is_first / is_last / is_terminal inconsistent with the step convention
    goal             a goal array whose shape does not match its step field
    record           a bad per-episode record value (task not a string, metadata not JSON, ...)
    schema_mismatch  valid on its own but different from the lake's schema

The schema is ``{"step": {key: {"dtype", "shape"}}, "goal": {key: {"dtype", "shape"}}}`` with
per-step shapes (the time axis dropped). The first append fixes it; see ``data_lake.lake``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from data_lake.episode import OPTIONAL_STEP_KEYS, PER_EPISODE_STEP_KEYS, REQUIRED_STEP_KEYS, Episode

FLOAT32_KEYS = ("state", "action", "reward", "achieved_goal")
BOOL_KEYS = ("is_first", "is_last", "is_terminal")
DEPTH_DTYPES = ("float32", "uint16")
Schema = dict[str, dict[str, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Problem:
    code: str
    field: str
    step: int | None
    details: str

    def __str__(self) -> str:
        where = self.field + (f" at step {self.step}" if self.step is not None else "")
        return f"[{self.code}] {where}: {self.details}"


class EpisodeValidationError(ValueError):
    """An episode (or a batch) was rejected; ``.problems`` lists why, per episode label."""

    def __init__(self, label: str, problems: list[Problem]):
        self.label = label
        self.problems = problems
        lines = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        self.details = f"episode {label} rejected:\n  {lines}{more}"  # every problem (CLI --verbose)
        others = f" (and {len(problems) - 1} more problems; --verbose lists them)" if len(problems) > 1 else ""
        super().__init__(f"episode {label} rejected: {problems[0] if problems else 'invalid'}{others}")


def _first_bad_step(mask: np.ndarray) -> int:
    flat = mask.reshape(len(mask), -1).any(axis=1)
    return int(np.argmax(flat))


def _step_shape(key: str, value: Any, problems: list[Problem]) -> np.ndarray | None:
    """Coerce to an ndarray without copying; report ragged per-step shapes with the step."""
    if isinstance(value, np.ndarray) and value.dtype != object:
        return value
    if isinstance(value, (list, tuple)):
        shapes = [np.shape(v) for v in value]
        for t, s in enumerate(shapes):
            if s != shapes[0]:
                problems.append(Problem("shape", key, t, f"ragged steps: shape {s}, but step 0 has {shapes[0]}"))
                return None
        try:
            return np.asarray(value)
        except ValueError as e:
            problems.append(Problem("shape", key, None, f"cannot form an array: {e}"))
            return None
    problems.append(Problem("dtype", key, None, f"expected a numpy array, found {type(value).__name__}"))
    return None


def validate_episode(ep: Episode) -> list[Problem]:
    """Every problem of one episode on its own (not against a lake schema)."""
    problems: list[Problem] = []
    arrays: dict[str, np.ndarray] = {}
    for key, value in ep.steps.items():
        a = _step_shape(key, value, problems)
        if a is not None:
            arrays[key] = a
    for key in REQUIRED_STEP_KEYS:
        if key not in ep.steps:
            problems.append(Problem("missing_field", key, None, "required step field is absent"))
    known = set(REQUIRED_STEP_KEYS) | set(OPTIONAL_STEP_KEYS)
    for key in ep.steps:
        if key not in known and not key.startswith(("images/", "depth/")):
            problems.append(
                Problem(
                    "unknown_field", key, None, "expected images/<cam>, depth/<cam>, or one of " + str(sorted(known))
                )
            )
    if "action" not in arrays:
        return problems
    T = len(arrays["action"])
    if T < 2:
        problems.append(Problem("too_short", "action", None, f"episode has {T} step(s); at least 2 are required"))
    for key, a in arrays.items():
        if a.ndim == 0 or len(a) != T:
            n = "a scalar" if a.ndim == 0 else f"{len(a)} steps"
            problems.append(Problem("shape", key, None, f"has {n}, but 'action' has {T} steps"))
            continue
        problems.extend(_check_field(key, a))
    problems.extend(_check_flags_and_time(arrays, T))
    problems.extend(_check_goal(ep, arrays))
    problems.extend(_check_record(ep))
    return problems


def _check_field(key: str, a: np.ndarray) -> list[Problem]:
    out: list[Problem] = []
    if key.startswith("images/"):
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3:
            out.append(Problem("image", key, None, f"expected uint8 (T, H, W, 3), found {a.dtype} {a.shape}"))
        return out
    if key.startswith("depth/"):
        if a.dtype.name not in DEPTH_DTYPES or a.ndim != 3:
            out.append(Problem("image", key, None, f"expected float32 or uint16 (T, H, W), found {a.dtype} {a.shape}"))
        elif a.dtype == np.float32 and not np.isfinite(a).all():
            bad = _first_bad_step(~np.isfinite(a))
            out.append(Problem("non_finite", key, bad, "NaN or Inf depth value"))
        return out
    expected = {"timestamp_ns": np.int64, "sim_state": np.float64, **{k: np.bool_ for k in BOOL_KEYS}}.get(
        key, np.float32
    )
    if a.dtype != expected:
        hint = f"; convert with .astype(np.{np.dtype(expected).name})" if a.dtype.kind in "fiub" else ""
        out.append(Problem("dtype", key, None, f"expected {np.dtype(expected).name}, found {a.dtype}{hint}"))
        return out
    ndim = 1 if key in ("reward", "timestamp_ns", "action_logp", *BOOL_KEYS) else 2
    if a.ndim != ndim:
        want = "(T,)" if ndim == 1 else "(T, D)"
        out.append(Problem("shape", key, None, f"expected {want}, found shape {a.shape}"))
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = _first_bad_step(~np.isfinite(a))
        why = " (a logged action has positive probability: log μ(a|s) must be finite)" if key == "action_logp" else ""
        out.append(
            Problem(
                "non_finite", key, bad, f"value {a[bad].ravel()[~np.isfinite(a[bad].ravel())][0]} is not finite{why}"
            )
        )
    return out


def _check_flags_and_time(arrays: dict[str, np.ndarray], T: int) -> list[Problem]:
    out: list[Problem] = []
    ts = arrays.get("timestamp_ns")
    if ts is not None and ts.dtype == np.int64 and ts.shape == (T,) and T > 1:
        d = np.diff(ts)
        if (d <= 0).any():
            t = int(np.argmax(d <= 0)) + 1
            out.append(
                Problem("timestamps", "timestamp_ns", t, f"{ts[t]} does not increase on step {t - 1}'s {ts[t - 1]}")
            )
    want = {"is_first": 0, "is_last": T - 1}
    for key, at in want.items():
        f = arrays.get(key)
        if f is None or f.dtype != np.bool_ or f.shape != (T,):
            continue
        expected = np.zeros(T, dtype=bool)
        expected[at] = True
        if not np.array_equal(f, expected):
            t = int(np.argmax(f != expected))
            out.append(Problem("flags", key, t, f"must be True exactly at step {at}; found {bool(f[t])} at step {t}"))
    term = arrays.get("is_terminal")
    if term is not None and term.dtype == np.bool_ and term.shape == (T,) and term[:-1].any():
        t = int(np.argmax(term[:-1]))
        out.append(Problem("flags", "is_terminal", t, "may be True only on the last step"))
    return out


def _check_goal(ep: Episode, arrays: dict[str, np.ndarray]) -> list[Problem]:
    out: list[Problem] = []
    for key, g in ep.goal.items():
        field = "goal/" + key
        if not isinstance(g, np.ndarray):
            out.append(Problem("goal", field, None, f"expected a numpy array, found {type(g).__name__}"))
            continue
        if key.startswith("images/"):
            step = arrays.get(key)
            want = step.shape[1:] if step is not None and step.ndim == 4 else None
            if g.dtype != np.uint8 or g.ndim != 3 or g.shape[-1] != 3 or (want is not None and g.shape != want):
                out.append(
                    Problem("goal", field, None, f"expected uint8 {want or '(H, W, 3)'}, found {g.dtype} {g.shape}")
                )
        elif key == "state":
            if g.dtype != np.float32 or g.ndim != 1:
                out.append(Problem("goal", field, None, f"expected float32 (G,), found {g.dtype} {g.shape}"))
            elif not np.isfinite(g).all():
                out.append(Problem("non_finite", field, None, "goal state holds NaN or Inf"))
        else:
            out.append(Problem("goal", field, None, "expected goal/images/<camera> or goal/state"))
    return out


def _check_record(ep: Episode) -> list[Problem]:
    out: list[Problem] = []
    for name in ("task", "source", "robot", "created_at"):
        if not isinstance(getattr(ep, name), str):
            out.append(Problem("record", name, None, f"expected a string, found {type(getattr(ep, name)).__name__}"))
    if ep.language is not None and not isinstance(ep.language, str):
        out.append(Problem("record", "language", None, "expected a string or None"))
    if ep.success is not None and not isinstance(ep.success, (bool, np.bool_)):
        out.append(Problem("record", "success", None, f"expected true/false/None, found {ep.success!r}"))
    try:
        json.dumps(dict(ep.metadata), allow_nan=False)
    except (TypeError, ValueError) as e:
        out.append(Problem("record", "metadata", None, f"must be JSON-serializable: {e}"))
    return out


# ---------------------------------------------------------------------------- schema
def schema_of(ep: Episode) -> Schema:
    """The schema an episode implies: dtype and per-step shape of each step and goal array."""
    return {
        "step": {
            k: {"dtype": np.asarray(v).dtype.name, "shape": list(np.shape(v)[1:])} for k, v in sorted(ep.steps.items())
        },
        "goal": {
            k: {"dtype": np.asarray(v).dtype.name, "shape": list(np.shape(v))} for k, v in sorted(ep.goal.items())
        },
    }


def schema_differences(lake: Schema, ep: Schema) -> tuple[list[Problem], Schema]:
    """Compare an episode's schema with the lake's.

    Returns (problems, additions): problems for fields that differ or are missing, and the new
    fields the episode brings (which only ``allow_new_fields`` accepts, but for the per-episode step
    fields, see ``Lake.append``). A goal field may be absent from an episode (goals are optional per
    episode); a step field may not, unless it is one of ``PER_EPISODE_STEP_KEYS`` (``action_logp``).
    """
    problems: list[Problem] = []
    additions: Schema = {"step": {}, "goal": {}}
    for part in ("step", "goal"):
        for key, spec in lake[part].items():
            got = ep[part].get(key)
            name = key if part == "step" else "goal/" + key
            if got is None:
                if part == "step" and key not in PER_EPISODE_STEP_KEYS:
                    problems.append(Problem("schema_mismatch", name, None, f"missing; the lake stores {_fmt(spec)}"))
            elif got != spec:
                problems.append(
                    Problem("schema_mismatch", name, None, f"found {_fmt(got)}, the lake stores {_fmt(spec)}")
                )
        for key in ep[part].keys() - lake[part].keys():
            additions[part][key] = ep[part][key]
    return problems, additions


def _fmt(spec: dict[str, Any]) -> str:
    return f"{spec['dtype']} per-step shape {tuple(spec['shape'])}"


def new_field_problems(additions: Schema) -> list[Problem]:
    return [
        Problem(
            "schema_mismatch",
            key if part == "step" else "goal/" + key,
            None,
            f"new field {_fmt(spec)} is not in the lake's schema; pass allow_new_fields (--allow-new-fields) to add it",
        )
        for part in ("step", "goal")
        for key, spec in sorted(additions[part].items())
    ]
