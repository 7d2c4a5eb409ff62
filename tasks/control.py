"""Shared scripted-controller plumbing for Cartesian grippers (tabletop and Fetch).

Every expert in robot-rl is a closed-loop function of simulator state, built from the three
primitives here, so noise or a bumped object is corrected on the next step rather than derailing
a fixed open-loop script:

* :func:`servo`: the ``dx, dy, dz`` action that moves the gripper toward a point (saturated).
* :func:`travel`: :func:`servo` that first rises to a clearance height when the gripper is low
  and far from its target (so it never sweeps through objects).
* :func:`pick_and_place` / :func:`push`: object manipulation as a decision on the current
  geometry (is the object held? is the gripper behind it? is it at the target?).

Actions follow the Fetch convention ``[dx, dy, dz, gripper]`` in [-1, 1], where ``dx..dz`` are
in units of ``scale`` metres and the gripper command is +1 open, -1 closed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OPEN = 1.0
CLOSED = -1.0


def servo(
    current: np.ndarray,
    target: np.ndarray,
    scale: float,
    gain: float = 1.0,
    max_speed: float = 1.0,
) -> np.ndarray:
    """Cartesian action (3,) that moves ``current`` toward ``target`` in one step.

    Components are limited to ``max_speed`` (<= 1) keeping the direction (the vector is scaled,
    not clipped per axis).
    """
    delta = gain * (np.asarray(target, float) - np.asarray(current, float)) / scale
    norm = np.max(np.abs(delta))
    return delta * (max_speed / norm) if norm > max_speed else delta


def travel(gripper: np.ndarray, target: np.ndarray, clear_z: float, scale: float, xy_tol: float = 0.015) -> np.ndarray:
    """Servo toward ``target`` without sweeping through objects.

    Far from the target in x, y (more than ``2 * xy_tol``) the gripper first rises to
    ``clear_z`` and then moves at that height; within ``xy_tol`` it goes straight to the target;
    in between it finishes the horizontal approach at its current height (this band keeps a
    small overshoot from sending it back up).
    """
    far = float(np.linalg.norm(target[:2] - gripper[:2]))
    if far > 2 * xy_tol:
        if gripper[2] < clear_z - 0.01:
            return servo(gripper, np.array([gripper[0], gripper[1], clear_z]), scale)
        return servo(gripper, np.array([target[0], target[1], max(target[2], clear_z)]), scale)
    if far > xy_tol:
        return servo(gripper, np.array([target[0], target[1], gripper[2]]), scale)
    return servo(gripper, target, scale)


def with_gripper(xyz: np.ndarray, gripper: float) -> np.ndarray:
    return np.append(xyz, gripper)


@dataclass(frozen=True)
class GraspSpec:
    """Geometry of grasping one object with one gripper (metres).

    Attributes:
        held_gap: finger gap when the fingers close on the object (default; see
            :func:`pick_and_place`).
        gap_tol: the object counts as held while the gap is within ``held_gap - gap_tol`` ..
            ``held_gap + gap_tol`` and the object is between the fingers.
        hover: approach height of the grasp centre above the object centre.
        clear_z: height the gripper travels at when carrying or moving between places.
        align_tol: x, y alignment needed before descending onto the object.
        height_tol: grasp-centre height error at which the fingers close.
        place_tol: the object counts as placed within this distance of the target.
        rest_height: after releasing, the gripper rests this far above the object centre.
    """

    held_gap: float
    gap_tol: float = 0.01
    hover: float = 0.06
    clear_z: float = 0.09
    align_tol: float = 0.01
    height_tol: float = 0.008
    place_tol: float = 0.012
    rest_height: float = 0.07


def is_held(gripper: np.ndarray, gap: float, obj: np.ndarray, held_gap: float, gap_tol: float) -> bool:
    """The object is between the fingers and the fingers are closed on it."""
    between = np.linalg.norm(obj[:2] - gripper[:2]) < 0.02 and abs(obj[2] - gripper[2]) < 0.02
    return bool(between and abs(gap - held_gap) < gap_tol)


def pick_and_place(
    gripper: np.ndarray,
    gap: float,
    obj: np.ndarray,
    target: np.ndarray,
    spec: GraspSpec,
    scale: float,
    release: bool = True,
    held_gap: float | None = None,
) -> np.ndarray:
    """One step of grasping ``obj`` and carrying its centre to ``target``.

    With ``release`` the object is let go at the target and the gripper rests ``rest_height``
    above it (fingers open); without it the object is held at the target. ``held_gap``
    overrides ``spec.held_gap`` (e.g. the width of a rotated block across the fingers).
    """
    held_gap = spec.held_gap if held_gap is None else held_gap
    held = is_held(gripper, gap, obj, held_gap, spec.gap_tol)
    at_target = np.linalg.norm(obj - target) < spec.place_tol
    if release and at_target and not held:
        rest = obj + np.array([0.0, 0.0, spec.rest_height])
        return with_gripper(travel(gripper, rest, rest[2], scale), OPEN)
    if held:
        if release and at_target:  # open before moving away
            return with_gripper(np.zeros(3), OPEN)
        # Aim the gripper so that the object (which may have slipped) lands on the target.
        aim = target + (gripper - obj)
        return with_gripper(travel(gripper, aim, spec.clear_z, scale, xy_tol=0.01), CLOSED)
    above = obj + np.array([0.0, 0.0, spec.hover])
    misalign = float(np.linalg.norm(gripper[:2] - obj[:2]))
    if misalign > 2 * spec.align_tol and gripper[2] < obj[2] + 0.02:
        # Low but off-centre (e.g. a missed grasp): back up above the object, fingers open.
        return with_gripper(servo(gripper, np.array([*gripper[:2], above[2]]), scale), OPEN)
    if misalign > spec.align_tol and gripper[2] >= obj[2] + 0.02:
        return with_gripper(travel(gripper, above, spec.clear_z, scale, xy_tol=0.03), OPEN)
    if gripper[2] - obj[2] > spec.height_tol:
        return with_gripper(servo(gripper, obj, scale), OPEN)
    if gap < held_gap - 1.5 * spec.gap_tol:  # closed on nothing: open and try again
        return with_gripper(servo(gripper, above, scale, gain=0.3), OPEN)
    return with_gripper(servo(gripper, obj, scale), CLOSED)


@dataclass(frozen=True)
class PushSpec:
    """Geometry of pushing one object with a closed gripper (metres).

    Attributes:
        contact: grasp-centre to object-centre distance (x, y) when pushing a face.
        push_z: grasp-centre height while pushing.
        clear_z: travel height when repositioning behind the object.
        lateral_tol: largest sideways offset from the push line before repositioning.
        done_tol: pushing stops when the object centre is this close to the target.
        settle_tol: a gripper that is not pushing leaves an object this close alone.
        max_advance: largest push advance per step (slows the push near the target).
        push_speed: action magnitude limit while in contact (a fast push flings the object).
        rest_height: when done, the gripper rests this far above the object centre.
    """

    contact: float
    push_z: float
    clear_z: float
    lateral_tol: float = 0.012
    done_tol: float = 0.01
    settle_tol: float = 0.02
    max_advance: float = 0.02
    push_speed: float = 0.3
    rest_height: float = 0.07


def push(gripper: np.ndarray, obj: np.ndarray, target: np.ndarray, spec: PushSpec, scale: float) -> np.ndarray:
    """One step of pushing ``obj`` (x, y) onto ``target`` (x, y) with the closed gripper."""
    to_target = target[:2] - obj[:2]
    distance = float(np.linalg.norm(to_target))
    u = to_target / max(distance, 1e-9)
    rel = gripper[:2] - obj[:2]
    along, lateral = float(rel @ u), float(rel @ np.array([-u[1], u[0]]))
    low = gripper[2] < spec.push_z + 0.015
    pushing = low and -spec.contact - 0.045 < along < -0.8 * spec.contact
    pushing = pushing and abs(lateral) < spec.lateral_tol
    done = distance < (spec.done_tol if pushing else spec.settle_tol)
    if low and (done or not pushing) and np.linalg.norm(rel) < spec.contact + 0.01:
        # Leaving the object: back away horizontally first; rising while pressed against it
        # would drag it up by friction.
        away = gripper[:2] + 0.02 * rel / max(float(np.linalg.norm(rel)), 1e-9)
        return with_gripper(servo(gripper, np.array([*away, gripper[2]]), scale, 0.5), CLOSED)
    # Hysteresis: a push runs down to done_tol; a resting gripper only returns beyond settle_tol.
    if done:
        rest = np.array([obj[0], obj[1], obj[2] + spec.rest_height])
        return with_gripper(travel(gripper, rest, rest[2], scale), CLOSED)
    if pushing:
        advance = min(0.5 * distance, spec.max_advance)  # decelerate: objects slide on
        aim = np.array([*(obj[:2] + u * (advance - spec.contact)), spec.push_z])
        return with_gripper(servo(gripper, aim, scale, max_speed=spec.push_speed), CLOSED)
    # Reposition: rise, move above the start point behind the object, descend.
    start_xy = obj[:2] - u * (spec.contact + 0.02)
    start = np.array([start_xy[0], start_xy[1], spec.push_z])
    return with_gripper(travel(gripper, start, spec.clear_z, scale, xy_tol=0.008), CLOSED)
