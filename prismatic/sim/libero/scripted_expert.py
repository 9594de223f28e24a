"""A scripted pick-and-place expert for LIBERO that reads privileged simulator state.

It drives the Panda with OSC_POSE deltas (the env's action space: a[:3] position delta, one unit = 5 cm;
a[3:6] world-frame axis-angle delta, one unit = 0.5 rad; a[6] gripper, -1 open / +1 close) through a phase
script: approach a hover point above the chosen grasp -> descend -> close -> lift to a carry height that clears
everything between start and target -> transport the object's reference point over the goal -> lower -> open ->
retreat. Grasps come from collision geometry (`geometry.py`): across the short horizontal axis for objects
narrower than the open gripper, on the rim (fingers radial) for bowls, and among the candidate grasps the one
whose hand and finger footprint collides least with taller neighbours. A failed grasp, a drop or a phase
timeout triggers a bounded number of re-plans. With a seed, the expert randomises its "style" (hover and
carry heights, speeds, grasp choice among near-equivalent candidates, lateral via points, temporally
correlated action noise) so repeated demonstrations are not one trajectory.

Use it inside a simulator process (never one that imported tensorflow):

    expert = make_expert(env, seed)       # env: LIBERO ControlEnv/OffScreenRenderEnv after reset + init state
    expert.reset(env)
    action = expert.act(env, obs)         # np.ndarray (7,), env convention
    expert.failure_reason                 # None while fine; a string once the expert gave up

Task support: one movable object and a goal `(In obj region)` / `(On obj target)`. Measured controller
success (default style randomisation, one attempt per episode, no rendering; 2026-11-22, 2-core CPU):

| suite          | tasks | fixed eval initial states | fresh random layouts | policy steps (mean) |
|----------------|-------|---------------------------|----------------------|---------------------|
| libero_object  | 0-9   | 50/50 (states 0-4 each)   | 30/30 (3 per task)   | 124-157             |
| libero_spatial | 0-9   | 40/40 (states 0-3 each)   | 20/20 (2 per task)   | 93-185              |

libero_spatial 4 (bowl in the cabinet's top drawer) and 9 (bowl on the cabinet) carry the bowl near the
Panda's reach limit (slow lifts, 160-200 steps of the 220-step horizon). libero_goal, libero_10 and libero_90 are
refused (UNSUPPORTED_SUITES): their goals need articulated objects, stacking or several objects.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from prismatic.sim.libero.geometry import (
    Grasp,
    GripperGeometry,
    PrivilegedScene,
    distance_to_segment,
    footprint,
    grasp_candidates,
    grasp_collision,
    grasp_height,
    gripper_yaw,
    points_in_oriented_rect,
    rotation_error,
    topdown_rotation,
    wrap_angle,
)

logger = logging.getLogger(__name__)

# Tasks the expert solves (measured success in the module docstring); everything else is refused by
# `check_task_supported` with the reason below.
SUPPORTED_TASKS: dict[str, tuple[int, ...]] = {
    "libero_object": tuple(range(10)),
    "libero_spatial": tuple(range(10)),
}
UNSUPPORTED_SUITES: dict[str, str] = {
    "libero_goal": "goals need drawers, knobs, stacking and pushing, not one pick-and-place",
    "libero_10": "long-horizon goals with two objects or articulated parts",
    "libero_90": "goals need articulated objects, stacking and multi-step plans",
}

# OSC_POSE output limits of robosuite's default controller config: one action unit moves the target this much.
POS_UNIT_M = 0.05
ROT_UNIT_RAD = 0.5
GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0


class UnsupportedTaskError(ValueError):
    """The expert cannot solve this task (the message names the task and the reason)."""


def check_task_supported(suite_name: str, task_id: int) -> None:
    """Raise UnsupportedTaskError (naming the reason) unless the expert supports the task."""
    if suite_name in UNSUPPORTED_SUITES:
        raise UnsupportedTaskError(f"{suite_name} is not supported by the scripted expert: "
                                   f"{UNSUPPORTED_SUITES[suite_name]}")
    if task_id not in SUPPORTED_TASKS.get(suite_name, ()):
        raise UnsupportedTaskError(f"{suite_name} task {task_id} is not supported by the scripted expert "
                                   f"(supported: { {s: list(t) for s, t in SUPPORTED_TASKS.items()} })")


class Phase(enum.Enum):
    APPROACH = "approach"
    DESCEND = "descend"
    GRASP = "grasp"
    LIFT = "lift"
    TRANSPORT = "transport"
    LOWER = "lower"
    RELEASE = "release"
    RETREAT = "retreat"
    RECOVER = "recover"  # open and rise after a failed grasp / drop, then re-plan
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class ExpertConfig:
    """Static knobs of the expert (not randomised)."""

    # 0 = the nominal deterministic script; 1 = the full randomisation ranges of `ExpertStyle.sample`.
    diversity: float = 1.0
    # Re-plans allowed after a failed grasp, a drop or a phase timeout before giving up.
    max_replans: int = 1
    # Per-phase step budgets before a phase counts as timed out: this slack plus the phase's travel distance
    # divided by `min_progress_m`.
    phase_slack_steps: dict[str, int] = field(
        default_factory=lambda: {"approach": 30, "descend": 30, "lift": 25, "transport": 30, "lower": 30,
                                 "retreat": 20, "recover": 25}
    )
    # Slowest expected eef progress (m/step): OSC tracks ~1.2 cm/step at full action, less at low speed caps.
    min_progress_m: float = 0.004
    # Grasps farther than this (m, horizontally) from the robot base are penalised: near the Panda's 0.85 m
    # reach the wrist cannot point straight down at table height.
    comfortable_reach_m: float = 0.72

    def __post_init__(self) -> None:
        if not 0.0 <= self.diversity <= 1.0:
            raise ValueError(f"ExpertConfig.diversity must be in [0, 1], got {self.diversity}")
        if self.max_replans < 0:
            raise ValueError(f"ExpertConfig.max_replans must be >= 0, got {self.max_replans}")
        if self.min_progress_m <= 0:
            raise ValueError(f"ExpertConfig.min_progress_m must be > 0, got {self.min_progress_m}")
        missing = {p.value for p in Phase} - {"grasp", "release", "done", "failed"} - set(self.phase_slack_steps)
        if missing:
            raise ValueError(f"ExpertConfig.phase_slack_steps lacks phases {sorted(missing)}")


@dataclass(frozen=True)
class ExpertStyle:
    """The randomised style of one demonstration (all lengths in metres)."""

    hover_height: float  # pre-grasp hover point above the grasp height
    carry_clearance: float  # gap kept under the carried object over every obstacle on the way
    max_speed: float  # cap on translation actions (action units, 1 = 5 cm/step)
    descend_speed: float  # cap while descending / lowering
    grasp_height_jitter: float  # added to the nominal grasp height
    release_height_jitter: float  # added to the nominal release height
    via_offset: float  # signed lateral offset of a via point halfway through the transport
    approach_offset: float  # signed lateral offset of a via point on the approach
    noise_std: float  # std of the correlated translation noise (action units)
    candidate_temperature: float  # > 0: pick among near-equal grasp candidates at random
    close_steps: int  # steps the gripper is commanded closed before lifting
    release_steps: int  # steps the gripper is commanded open before retreating
    retreat_height: float

    @classmethod
    def nominal(cls) -> ExpertStyle:
        return cls(hover_height=0.10, carry_clearance=0.05, max_speed=1.0, descend_speed=0.6,
                   grasp_height_jitter=0.0, release_height_jitter=0.0, via_offset=0.0, approach_offset=0.0,
                   noise_std=0.0, candidate_temperature=0.0, close_steps=12, release_steps=10,
                   retreat_height=0.10)

    @classmethod
    def sample(cls, rng: np.random.Generator, diversity: float) -> ExpertStyle:
        """Blend the nominal style with a random one; `diversity` scales every range linearly."""
        nominal = cls.nominal()
        if diversity == 0.0:
            return nominal

        def around(value: float, low: float, high: float) -> float:
            return float(value + diversity * (rng.uniform(low, high) - value))

        return cls(
            hover_height=around(nominal.hover_height, 0.07, 0.16),
            carry_clearance=around(nominal.carry_clearance, 0.03, 0.10),
            max_speed=around(nominal.max_speed, 0.65, 1.0),
            descend_speed=around(nominal.descend_speed, 0.35, 0.8),
            grasp_height_jitter=around(0.0, -0.006, 0.006),
            release_height_jitter=around(0.0, -0.01, 0.02),
            via_offset=around(0.0, -0.06, 0.06),
            approach_offset=around(0.0, -0.08, 0.08),
            noise_std=around(0.0, 0.0, 0.12),
            candidate_temperature=0.01 * diversity,
            close_steps=int(round(around(nominal.close_steps, 9, 15))),
            release_steps=int(round(around(nominal.release_steps, 8, 13))),
            retreat_height=around(nominal.retreat_height, 0.06, 0.14),
        )


@dataclass(frozen=True)
class TaskGoal:
    obj: str  # movable object to pick
    target: str  # object it goes in / on
    relation: str  # "in" (a target region site) or "on" (the target object)
    region_site: str | None  # site name for "in"


def _domain(env):
    """The robosuite/LIBERO domain env behind a LIBERO ControlEnv wrapper (or the domain itself)."""
    inner = getattr(env, "env", None)
    return inner if inner is not None and hasattr(inner, "sim") else env


def parse_goal(domain) -> TaskGoal:
    """Read the BDDL goal: exactly one (In obj region) or (On obj target) predicate."""
    goal = domain.parsed_problem["goal_state"]
    if len(goal) != 1 or len(goal[0]) != 3 or goal[0][0].lower() not in ("in", "on"):
        raise UnsupportedTaskError(f"goal {goal} is not a single In/On predicate; the scripted expert only does "
                                   f"pick-and-place")
    relation, obj, dest = goal[0][0].lower(), goal[0][1], goal[0][2]
    if obj not in domain.objects_dict:
        raise UnsupportedTaskError(f"goal object {obj!r} is not a movable object")
    if relation == "in":
        if dest not in domain.object_sites_dict:
            raise UnsupportedTaskError(f"goal region {dest!r} of (In {obj} {dest}) is not a site")
        target = domain.object_sites_dict[dest].parent_name
        return TaskGoal(obj=obj, target=target, relation="in", region_site=dest)
    if dest not in domain.obj_body_id:
        raise UnsupportedTaskError(f"goal target {dest!r} of (On {obj} {dest}) is not an object")
    return TaskGoal(obj=obj, target=dest, relation="on", region_site=None)


class ScriptedExpert:
    """Phase-script pick-and-place controller; see the module docstring."""

    def __init__(self, seed: int, config: ExpertConfig | None = None):
        self.config = config or ExpertConfig()
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.style = ExpertStyle.sample(self.rng, self.config.diversity)
        self._ready = False

    def reset(self, env) -> None:
        """Read the scene (goal, collision clouds, gripper) at the current (initial) state and plan a grasp."""
        domain = _domain(env)
        self.goal = parse_goal(domain)
        self.scene = PrivilegedScene(domain, self.goal.obj, self.goal.target, self.goal.region_site)
        self.gripper: GripperGeometry = self.scene.gripper
        self.phase, self.phase_steps, self._phase_limit = Phase.APPROACH, 0, None
        self.phase_log: list[tuple[str, int]] = []  # (phase, steps spent in it) of every finished phase
        self.replans, self.steps, self.failure_reason = 0, 0, None
        self._noise, self._tried, self._stall, self._unpinched = np.zeros(6), [], 0, 0
        self._prev_pos = self.scene.eef()[0]
        # Carry heights are capped relative to the start pose (which LIBERO puts well above the workspace).
        self._home_z = float(self._prev_pos[2])
        self._plan_grasp_and_approach()
        self._ready = True

    @property
    def finished(self) -> bool:
        """The script ran to its end (DONE) or gave up (FAILED)."""
        return self.phase in (Phase.DONE, Phase.FAILED)

    # ---------------------------------------------------------------------------------------------- planning
    def _plan_grasp_and_approach(self) -> None:
        self.grasp = self._plan_grasp()
        self._plan_approach()
        pos, rot = self.scene.eef()
        # Budget the wrist turn too (0.1 m of travel per radian: OSC turns ~0.25 rad/step at full action).
        turn = abs(wrap_angle(self.grasp.yaw - gripper_yaw(rot)))
        self._set_phase(Phase.APPROACH, _path_length([pos, *self.waypoints]) + 0.1 * turn)

    def _plan_grasp(self) -> Grasp:
        """Score every candidate grasp (collisions, wrist rotation, reach, earlier failures) and pick the best,
        or with a style temperature one of the near-best at random."""
        obj_pts = self.scene.cloud(self.goal.obj)
        fp = footprint(obj_pts)
        obstacles = self.scene.obstacles(exclude=(self.goal.obj,))
        yaw_now = gripper_yaw(self.scene.eef()[1])
        scored = []
        for xy, yaw, kind, pref in grasp_candidates(fp, self.gripper, yaw_now):
            z = grasp_height(fp, kind, self.gripper) + self.style.grasp_height_jitter
            axis_u = np.array([-math.sin(yaw), math.cos(yaw)])
            obj_half_u = float(np.abs((obj_pts[:, :2] - xy) @ axis_u).max()) if kind == "body" else 0.0
            collision = grasp_collision(xy, yaw, z, obstacles, obj_half_u, self.gripper)
            reach = float(np.linalg.norm(xy - self.scene.base_xy))
            cost = (collision + pref + 0.002 * abs(wrap_angle(yaw - yaw_now))  # small wrist turns: faster
                    + 0.5 * max(0.0, reach - self.config.comfortable_reach_m))
            if any(np.linalg.norm(t.xy - xy) < 1e-3 and abs(wrap_angle(t.yaw - yaw)) < 1e-3 for t in self._tried):
                cost += 1.0  # a re-plan tries something else first
            scored.append((cost, Grasp(xy=np.array(xy), z=z, yaw=yaw, kind=kind, collision=collision)))
        costs = np.array([c for c, _ in scored])
        temperature = self.style.candidate_temperature
        if temperature > 0:
            weights = np.exp(-(costs - costs.min()) / temperature)
            choice = int(self.rng.choice(len(scored), p=weights / weights.sum()))
        else:
            choice = int(np.argmin(costs))
        grasp = scored[choice][1]
        self._tried.append(grasp)
        logger.debug("grasp %s among %d candidates", grasp, len(scored))
        return grasp

    def _plan_approach(self) -> None:
        """Hover point above the grasp (its fingers clear everything under the hand's footprint) and an
        optional sideways via point on the way there."""
        g, grasp = self.gripper, self.grasp
        obstacles = self.scene.obstacles()
        axis_u = np.array([-math.sin(grasp.yaw), math.cos(grasp.yaw)])
        near = points_in_oriented_rect(obstacles[:, :2], grasp.xy, axis_u, g.hand_half_u + 0.02, g.hand_half_v + 0.02)
        local_top = float(obstacles[near, 2].max()) if near.any() else grasp.z
        hover_z = max(grasp.z + self.style.hover_height, local_top + g.finger_below + 0.02)
        self.hover = np.array([*grasp.xy, hover_z])
        pos = self.scene.eef()[0]
        self.waypoints = [np.array([*mid, max(pos[2], hover_z)])
                          for mid in _via_points(pos[:2], self.hover[:2], self.style.approach_offset)] + [self.hover]

    def _plan_carry(self) -> None:
        """Carry height, transport path and release height, from the grasped object's current pose."""
        fp = footprint(self.scene.cloud(self.goal.obj))
        pos = self.scene.eef()[0]
        start, goal = self.scene.obj_ref_xy(), self.scene.place_xy()
        path = [start, *_via_points(start, goal, self.style.via_offset), goal]
        # The carried object (and the hand around it) must clear every obstacle near the path, including
        # whatever it starts on and the target itself.
        obstacles = self.scene.obstacles(exclude=(self.goal.obj,))
        corridor = max(fp.half_long, self.gripper.hand_half_u) + 0.03
        near = np.zeros(len(obstacles), dtype=bool)
        for a, b in zip(path[:-1], path[1:]):
            near |= distance_to_segment(obstacles[:, :2], a, b) < corridor
        top = float(obstacles[near, 2].max()) if near.any() else fp.lo[2]
        site_over_bottom = float(pos[2] - fp.lo[2])  # grip site height above the carried object's bottom
        carry_z = top + self.style.carry_clearance + site_over_bottom
        self.carry_z = min(max(carry_z, pos[2]), self._home_z + 0.20)
        # Far from the base the arm may not reach the planned height; any height clearing `top` will do.
        self._min_carry_bottom = top + 0.015
        self.obj_path = path[1:]  # for the object's reference point; the eef follows with a constant offset
        target_top = float(self.scene.cloud(self.goal.target)[:, 2].max())
        # Containers: drop from just below the rim (the hand stays above it); surfaces: release 1 cm above.
        release_bottom = target_top - 0.02 if self.goal.relation == "in" else target_top + 0.01
        self.release_bottom = release_bottom + self.style.release_height_jitter

    # ---------------------------------------------------------------------------------------------- control
    def act(self, env, obs=None) -> np.ndarray:
        """One env-convention action (7,). `obs` is unused: the expert reads the simulator directly."""
        if not self._ready:
            raise RuntimeError("ScriptedExpert.act called before reset(env)")
        if _domain(env).sim is not self.scene.sim:
            raise RuntimeError("ScriptedExpert.act got a different env than the one passed to reset()")
        pos, rot = self.scene.eef()
        moved = float(np.linalg.norm(pos - self._prev_pos))
        self._stall = self._stall + 1 if moved < 1e-3 else 0  # < 1 mm per step: blocked or at the reach limit
        self._prev_pos = pos
        self._unpinched = 0 if self.scene.object_pinched() else self._unpinched + 1
        action = self._phase_action(pos, rot)
        self.steps += 1
        self.phase_steps += 1
        if self._phase_limit is not None and self.phase_steps > self._phase_limit:
            self._fail_or_replan(f"timeout_{self.phase.value}")
        return self._add_noise(action)

    def _phase_action(self, pos: np.ndarray, rot: np.ndarray) -> np.ndarray:
        """The current phase's action; a phase that is complete switches to the next and defers to it."""
        handler = {
            Phase.APPROACH: self._approach, Phase.DESCEND: self._descend, Phase.GRASP: self._close,
            Phase.LIFT: self._lift, Phase.TRANSPORT: self._transport, Phase.LOWER: self._lower,
            Phase.RELEASE: self._release, Phase.RETREAT: self._retreat, Phase.RECOVER: self._recover,
        }.get(self.phase)
        if handler is None:  # DONE / FAILED: exactly zero motion, gripper open (a no-op the generator drops)
            return np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, GRIPPER_OPEN])
        action = handler(pos, rot)
        return self._phase_action(pos, rot) if action is None else action

    def _approach(self, pos, rot):
        if len(self.waypoints) > 1 and np.linalg.norm(self.waypoints[0] - pos) < 0.03:
            self.waypoints.pop(0)
        yaw_err = abs(wrap_angle(gripper_yaw(rot) - self.grasp.yaw))
        if len(self.waypoints) == 1 and np.linalg.norm(self.hover - pos) < 0.015 and yaw_err < 0.08:
            return self._set_phase(Phase.DESCEND, pos[2] - self.grasp.z)
        return self._move(self.waypoints[0], self.style.max_speed, GRIPPER_OPEN)

    def _descend(self, pos, rot):
        target = np.array([*self.grasp.xy, self.grasp.z])
        if np.linalg.norm(target - pos) < 0.007 or (self._stall >= 4 and pos[2] - self.grasp.z < 0.02):
            return self._set_phase(Phase.GRASP)
        return self._move(target, self._speed(pos[2] - self.grasp.z), GRIPPER_OPEN)

    def _close(self, pos, rot):
        if self.phase_steps >= self.style.close_steps:
            self._plan_carry()
            return self._set_phase(Phase.LIFT, self.carry_z - pos[2])
        return self._move(np.array([*self.grasp.xy, self.grasp.z]), self.style.descend_speed, GRIPPER_CLOSE)

    def _lift(self, pos, rot):
        if self._stall >= 4 and self.scene.obj_bottom() > self._min_carry_bottom:
            self.carry_z = float(pos[2])  # reach limit: carry at the height reached
        if pos[2] > self.carry_z - 0.01:
            if not self._holding():
                return self._fail_or_replan("grasp_failed")
            return self._set_phase(Phase.TRANSPORT, _path_length([self.scene.obj_ref_xy(), *self.obj_path]))
        return self._move(np.array([*self.grasp.xy, self.carry_z]), self._speed(1.0, ramp=True), GRIPPER_CLOSE)

    def _transport(self, pos, rot):
        if not self._holding():
            return self._fail_or_replan("dropped")
        ref = self.scene.obj_ref_xy()
        err = float(np.linalg.norm(self.obj_path[0] - ref))
        if len(self.obj_path) > 1 and err < 0.04:
            self.obj_path.pop(0)
        elif len(self.obj_path) == 1 and err < 0.008:
            return self._set_phase(Phase.LOWER, self.scene.obj_bottom() - self.release_bottom)
        # A bowl held by its rim swings (and slips) when accelerated hard: carry it slower.
        speed = self._speed(1.0, ramp=True) * (0.7 if self.grasp.kind == "rim" else 1.0)
        return self._move(np.array([*(pos[:2] + self.obj_path[0] - ref), self.carry_z]), speed, GRIPPER_CLOSE)

    def _lower(self, pos, rot):
        bottom = self.scene.obj_bottom()
        if bottom < self.release_bottom + 0.005 or self._stall >= 4:  # stalled: resting on the target
            self._release_z = pos[2]
            return self._set_phase(Phase.RELEASE)
        xy = pos[:2] + self.scene.place_xy() - self.scene.obj_ref_xy()
        target = np.array([*xy, pos[2] + self.release_bottom - bottom])
        return self._move(target, self._speed(bottom - self.release_bottom), GRIPPER_CLOSE)

    def _release(self, pos, rot):
        if self.phase_steps >= self.style.release_steps:
            return self._set_phase(Phase.RETREAT, self.style.retreat_height)
        # No sideways motion: it would drag the released object.
        return self._move(np.array([*pos[:2], self._release_z]), self.style.descend_speed, GRIPPER_OPEN)

    def _retreat(self, pos, rot):
        target = np.array([*pos[:2], self._release_z + self.style.retreat_height])
        if pos[2] > target[2] - 0.01:
            return self._set_phase(Phase.DONE)
        return self._move(target, self.style.max_speed, GRIPPER_OPEN)

    def _recover(self, pos, rot):
        rise = np.array([*pos[:2], max(self.hover[2], pos[2])])
        if pos[2] > rise[2] - 0.015 and self.phase_steps >= 6:  # opened and risen: plan a new grasp
            return self._plan_grasp_and_approach()
        return self._move(rise, self.style.max_speed, GRIPPER_OPEN, yaw=gripper_yaw(rot))

    # ---------------------------------------------------------------------------------------------- helpers
    def _move(self, target: np.ndarray, speed: float, gripper: float, yaw: float | None = None) -> np.ndarray:
        """Proportional OSC_POSE action towards `target` (grip-site position) with a top-down gripper at `yaw`
        (default: the grasp's), translation capped at `speed` action units."""
        pos, rot = self.scene.eef()
        action = np.zeros(7)
        action[:3] = np.clip((target - pos) / POS_UNIT_M, -speed, speed)
        yaw = self.grasp.yaw if yaw is None else yaw
        action[3:6] = np.clip(rotation_error(topdown_rotation(yaw), rot) / ROT_UNIT_RAD, -1.0, 1.0)
        action[6] = gripper
        return action

    def _speed(self, remaining_m: float, ramp: bool = False) -> float:
        """Speed cap: full speed far from a contact-rich goal, `descend_speed` for its last 5 cm; with `ramp`
        the cap grows over the phase's first steps (a held object swings and slips when jerked)."""
        speed = self.style.max_speed if remaining_m > 0.05 else self.style.descend_speed
        if ramp:
            speed *= min(1.0, (self.phase_steps + 1) / 6)
        return speed

    def _set_phase(self, phase: Phase, travel_m: float = 0.0) -> None:
        """Enter `phase`; its step budget is a slack plus the time to travel `travel_m` at the slowest pace."""
        logger.debug("step %d: %s -> %s", self.steps, self.phase.value, phase.value)
        if self._ready:
            self.phase_log.append((self.phase.value, self.phase_steps))
        self.phase, self.phase_steps, self._stall = phase, 0, 0
        slack = self.config.phase_slack_steps.get(phase.value)
        self._phase_limit = None if slack is None else int(slack + abs(travel_m) / self.config.min_progress_m)

    def _fail_or_replan(self, reason: str) -> None:
        if self.replans < self.config.max_replans:
            self.replans += 1
            logger.debug("re-plan %d after %s", self.replans, reason)
            self._set_phase(Phase.RECOVER, max(self.hover[2] - self.scene.eef()[0][2], 0.0))
        else:
            self.failure_reason = reason
            self._set_phase(Phase.FAILED)

    def _holding(self) -> bool:
        """Both fingers touch the object, or did so within the last 3 steps (contacts flicker while a held bowl
        swings). A tilted or slipped object still counts; a dropped one does not."""
        return self._unpinched < 3

    def _add_noise(self, action: np.ndarray) -> np.ndarray:
        """Temporally correlated (AR(1), ~5 steps) translation noise, strongest in free-space phases."""
        scale = {Phase.APPROACH: 1.0, Phase.TRANSPORT: 1.0, Phase.RETREAT: 1.0, Phase.LIFT: 0.5,
                 Phase.DESCEND: 0.25, Phase.LOWER: 0.25}.get(self.phase, 0.0)
        rho = 0.8
        self._noise = rho * self._noise + math.sqrt(1 - rho**2) * self.rng.standard_normal(6)
        std = self.style.noise_std * scale
        if std > 0:
            action = action.copy()
            action[:3] += std * self._noise[:3]
            action[3:6] += 0.3 * std * self._noise[3:6]
            action[:6] = np.clip(action[:6], -1.0, 1.0)
        return action


def _via_points(a: np.ndarray, b: np.ndarray, offset: float) -> list[np.ndarray]:
    """[the midpoint of a-b pushed `offset` metres sideways] when that is a real detour, else []."""
    direction = b - a
    dist = float(np.linalg.norm(direction))
    if abs(offset) <= 1e-3 or dist <= 0.08:
        return []
    return [(a + b) / 2 + offset * np.array([-direction[1], direction[0]]) / dist]


def _path_length(points: list[np.ndarray]) -> float:
    return float(sum(np.linalg.norm(b - a) for a, b in zip(points[:-1], points[1:])))


def make_expert(env, seed: int, config: ExpertConfig | None = None) -> ScriptedExpert:
    """Factory used by the evaluation workers (`--policy scripted`) and the demo generator.

    env: a LIBERO env (after reset and loading the initial state); seed: randomises the style (see
    ExpertConfig.diversity). Call `reset(env)` before the first `act`.
    """
    if not hasattr(_domain(env), "sim"):
        raise TypeError(f"make_expert needs a LIBERO env (ControlEnv / OffScreenRenderEnv), got {type(env).__name__}")
    return ScriptedExpert(seed=seed, config=config)
