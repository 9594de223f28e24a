"""Object and gripper geometry read from the MuJoCo model: the privileged state the scripted expert plans with.

LIBERO's `<obj>_pos` observations are body origins, which are neither the geometric centre nor informative
about size. The expert therefore works on the world-frame points of each body's COLLISION geoms (the shapes the
physics actually uses): their axis-aligned bounding box gives grasp heights, carried-object bottoms and target
tops; a 2-D principal-axis fit gives the grasp yaw across the short side; and "obstacle clouds" of the other
bodies let grasp candidates and carry heights be checked for collisions.

Geoms are sampled on a coarse grid over their volume (boxes, cylinders, ...) or by their vertices (meshes), so
a hand footprint that crosses a box's face without containing one of its corners is still detected.
All functions here are pure numpy on `mujoco.MjModel` / `mujoco.MjData`; nothing imports tensorflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# MuJoCo geom type codes (mujoco.mjtGeom), spelled out so this module imports without mujoco.
GEOM_PLANE, GEOM_HFIELD, GEOM_SPHERE, GEOM_CAPSULE, GEOM_ELLIPSOID, GEOM_CYLINDER, GEOM_BOX, GEOM_MESH = range(8)
# Primitive geoms (boxes etc.) are sampled on a grid with at most this spacing (m), finer than the hand's
# 2-8 cm features, so a cabinet's top panel is not just its corners; at most MAX_GRID points per axis.
GRID_SPACING_M = 0.025
MAX_GRID = 16
# Points on the circle used for cylinders / capsules.
CIRCLE_POINTS = 12


def _grid(half_extent: float) -> np.ndarray:
    """Grid coordinates in [-1, 1] spaced at most GRID_SPACING_M apart over a half extent (both ends kept)."""
    n = int(np.clip(np.ceil(2 * half_extent / GRID_SPACING_M) + 1, 2, MAX_GRID))
    return np.linspace(-1.0, 1.0, n)


def _box_grid(half: np.ndarray) -> np.ndarray:
    axes = [_grid(float(h)) * h for h in half]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def primitive_points(geom_type: int, size: np.ndarray) -> np.ndarray:
    """Points (K, 3) in the geom frame covering a primitive geom's volume (a grid over it, corners included)."""
    if geom_type == GEOM_BOX or geom_type == GEOM_ELLIPSOID:
        return _box_grid(np.asarray(size[:3]))  # an ellipsoid is bounded by its box; conservative is right here
    if geom_type == GEOM_SPHERE:
        return _box_grid(np.full(3, size[0]))
    if geom_type in (GEOM_CYLINDER, GEOM_CAPSULE):
        radius, half_height = size[0], size[1]
        if geom_type == GEOM_CAPSULE:
            half_height = half_height + radius
        angles = np.linspace(0.0, 2 * np.pi, CIRCLE_POINTS, endpoint=False)
        ring = np.stack([np.cos(angles), np.sin(angles)], axis=-1) * radius  # (C, 2)
        heights = _grid(half_height) * half_height
        rings = [np.concatenate([ring, np.full((len(ring), 1), z)], axis=1) for z in heights]
        axis = np.stack([np.zeros_like(heights), np.zeros_like(heights), heights], axis=-1)
        return np.concatenate(rings + [axis], axis=0)
    raise ValueError(f"geom type {geom_type} has no finite extent (planes and height fields are arenas, not objects)")


def geom_local_points(model, geom_id: int) -> np.ndarray:
    """Points (K, 3) describing one geom in its own frame: mesh vertices, or a grid over a primitive."""
    geom_type = int(model.geom_type[geom_id])
    if geom_type == GEOM_MESH:
        mesh_id = int(model.geom_dataid[geom_id])
        start, count = int(model.mesh_vertadr[mesh_id]), int(model.mesh_vertnum[mesh_id])
        return np.asarray(model.mesh_vert[start : start + count], dtype=np.float64)
    return primitive_points(geom_type, np.asarray(model.geom_size[geom_id], dtype=np.float64))


def is_collision_geom(model, geom_id: int) -> bool:
    """A geom takes part in contacts when its contype or conaffinity bit mask is non-zero."""
    return bool(int(model.geom_contype[geom_id]) | int(model.geom_conaffinity[geom_id]))


class BodyCloud:
    """The collision points of one body subtree, cached in geom frames; `world(data)` transforms them.

    root_body_id: MuJoCo id of the body whose whole subtree is collected (LIBERO objects are free-joint root
    bodies; fixtures such as cabinets have child bodies for drawers and doors).
    """

    def __init__(self, model, root_body_id: int, name: str = ""):
        self.name = name
        subtree = {b for b in range(model.nbody) if _is_in_subtree(model, b, root_body_id)}
        self.geom_ids = np.array(
            [g for g in range(model.ngeom) if int(model.geom_bodyid[g]) in subtree and is_collision_geom(model, g)],
            dtype=np.int64,
        )
        if len(self.geom_ids) == 0:
            raise ValueError(f"body {name or root_body_id!r} has no collision geoms")
        self._local = [geom_local_points(model, int(g)) for g in self.geom_ids]

    def world(self, data) -> np.ndarray:
        """World-frame points (N, 3) at the current simulator state."""
        out = []
        for g, pts in zip(self.geom_ids, self._local):
            rot = np.asarray(data.geom_xmat[g]).reshape(3, 3)
            out.append(pts @ rot.T + np.asarray(data.geom_xpos[g]))
        return np.concatenate(out, axis=0)


def _is_in_subtree(model, body_id: int, root_id: int) -> bool:
    while True:
        if body_id == root_id:
            return True
        if body_id == 0:
            return False
        body_id = int(model.body_parentid[body_id])


@dataclass(frozen=True)
class Footprint:
    """Axis-aligned box and horizontal principal axes of a point cloud (world frame).

    lo, hi: (3,) AABB corners. center_xy: (2,) centre of the extent along the principal axes. long_axis: unit
    (2,) direction of the larger horizontal extent. half_long, half_short: half extents along long_axis and
    its perpendicular.
    """

    lo: np.ndarray
    hi: np.ndarray
    center_xy: np.ndarray
    long_axis: np.ndarray
    half_long: float
    half_short: float

    @property
    def short_axis(self) -> np.ndarray:
        return np.array([-self.long_axis[1], self.long_axis[0]])

    @property
    def height(self) -> float:
        return float(self.hi[2] - self.lo[2])


def footprint(points: np.ndarray) -> Footprint:
    """AABB plus a 2-D principal-axis fit of (N, 3) points (the axes of the horizontal spread)."""
    if points.ndim != 2 or points.shape[1] != 3 or len(points) < 3:
        raise ValueError(f"footprint needs (N>=3, 3) points, got shape {points.shape}")
    lo, hi = points.min(axis=0), points.max(axis=0)
    xy = points[:, :2]
    centred = xy - xy.mean(axis=0)
    cov = centred.T @ centred / len(xy)
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
    long_axis = eigvecs[:, 1] / np.linalg.norm(eigvecs[:, 1])
    short_axis = np.array([-long_axis[1], long_axis[0]])
    proj_l, proj_s = xy @ long_axis, xy @ short_axis
    half_long, half_short = (proj_l.max() - proj_l.min()) / 2, (proj_s.max() - proj_s.min()) / 2
    center = long_axis * (proj_l.max() + proj_l.min()) / 2 + short_axis * (proj_s.max() + proj_s.min()) / 2
    if half_short > half_long:  # PCA ranks spread, not extent; keep "long" = larger extent
        long_axis, short_axis = short_axis, -long_axis
        half_long, half_short = half_short, half_long
    return Footprint(lo=lo, hi=hi, center_xy=center, long_axis=long_axis, half_long=float(half_long),
                     half_short=float(half_short))


def points_in_oriented_rect(points_xy: np.ndarray, center_xy: np.ndarray, axis_u: np.ndarray, half_u: float,
                            half_v: float, u_min: float = 0.0) -> np.ndarray:
    """Boolean mask (N,) of points inside a rectangle centred at center_xy with unit axis axis_u; `u_min`
    excludes the central band |u| < u_min (for two-sided finger zones)."""
    rel = points_xy - center_xy
    u = rel @ axis_u
    v = rel @ np.array([-axis_u[1], axis_u[0]])
    return (np.abs(u) <= half_u) & (np.abs(u) >= u_min) & (np.abs(v) <= half_v)


def distance_to_segment(points_xy: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance (N,) from 2-D points to the segment a-b."""
    ab = b - a
    denom = float(ab @ ab)
    if denom < 1e-12:
        return np.linalg.norm(points_xy - a, axis=1)
    t = np.clip((points_xy - a) @ ab / denom, 0.0, 1.0)
    return np.linalg.norm(points_xy - (a + t[:, None] * ab), axis=1)


@dataclass(frozen=True)
class GripperGeometry:
    """The Panda hand measured in the end-effector (grip) site frame at start-up, in metres.

    hand_half_u / hand_half_v: half extents of the hand's collision hull along the finger (closing) axis and
    across it. hand_bottom: height of the hand hull's lowest point above the grip site. finger_below: how far
    the finger pads reach below the grip site. max_opening: inner distance between the open pads.
    finger_half_v: half width of a finger across the closing axis.
    """

    hand_half_u: float
    hand_half_v: float
    hand_bottom: float
    finger_below: float
    max_opening: float
    finger_half_v: float


def measure_gripper(model, data, eef_site_id: int, hand_geoms: list[int], finger_geoms: list[int],
                    pad_geoms: list[int]) -> GripperGeometry:
    """Measure the hand in the grip-site frame (x = closing axis, z = approach direction, pointing down when
    the gripper points down). Call with the gripper fully open (as after a reset)."""
    site_rot = np.asarray(data.site_xmat[eef_site_id]).reshape(3, 3)
    site_pos = np.asarray(data.site_xpos[eef_site_id])

    def local(geoms: list[int]) -> np.ndarray:
        pts = []
        for g in geoms:
            rot = np.asarray(data.geom_xmat[g]).reshape(3, 3)
            world = geom_local_points(model, g) @ rot.T + np.asarray(data.geom_xpos[g])
            pts.append((world - site_pos) @ site_rot)  # world -> site frame
        return np.concatenate(pts, axis=0)

    hand, fingers, pads = local(hand_geoms), local(finger_geoms), local(pad_geoms)
    # Site z points along the approach direction (down), so "above the site" is negative z.
    pad_inner = np.abs(pads[:, 0]).min()
    return GripperGeometry(
        hand_half_u=float(np.abs(hand[:, 0]).max()),
        hand_half_v=float(np.abs(hand[:, 1]).max()),
        hand_bottom=float(-hand[:, 2].max()),
        finger_below=float(max(fingers[:, 2].max(), pads[:, 2].max())),
        max_opening=float(2 * pad_inner),
        finger_half_v=float(np.abs(fingers[:, 1]).max()),
    )


# --------------------------------------------------------------------------------------------------
# Gripper orientation (top-down grasps) and grasp candidates
# --------------------------------------------------------------------------------------------------
# Top-down gripper at yaw 0: site x (closing axis) = world y, site y = world x, site z (approach) = world -z.
R_TOPDOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def rotation_error(r_des: np.ndarray, r_cur: np.ndarray) -> np.ndarray:
    """World-frame axis-angle (3,) of r_des @ r_cur^T (what robosuite 1.4's OSC adds to the current pose)."""
    r = r_des @ r_cur.T
    # Matrix -> unit quaternion (w, x, y, z), numerically safe near 180 degrees (Shepperd).
    tr = np.trace(r)
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = np.array([0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s])
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + r[i, i] - r[j, j] - r[k, k], 1e-12))
        q = np.empty(4)
        q[0] = (r[k, j] - r[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (r[j, i] + r[i, j]) / s
        q[1 + k] = (r[k, i] + r[i, k]) / s
    if q[0] < 0:
        q = -q
    sin_half = float(np.linalg.norm(q[1:]))
    if sin_half < 1e-9:
        return np.zeros(3)
    angle = 2.0 * math.atan2(sin_half, q[0])
    return q[1:] / sin_half * angle


def topdown_rotation(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ R_TOPDOWN


def gripper_yaw(rot: np.ndarray) -> float:
    closing = rot[:, 0]
    return math.atan2(-closing[0], closing[1])


def wrap_angle(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def closing_yaw(axis_xy: np.ndarray, near_yaw: float) -> float:
    """Yaw whose closing axis is parallel to `axis_xy`; of the two (yaw, yaw + pi) the one nearest `near_yaw`."""
    yaw = math.atan2(-axis_xy[0], axis_xy[1])
    other = wrap_angle(yaw + math.pi)
    return yaw if abs(wrap_angle(yaw - near_yaw)) <= abs(wrap_angle(other - near_yaw)) else other


@dataclass(frozen=True)
class Grasp:
    xy: np.ndarray  # (2,) grip-site position
    z: float  # grip-site height
    yaw: float  # gripper yaw (closing axis = (-sin yaw, cos yaw))
    kind: str  # "body" (across the short axis) or "rim" (bowl rim, fingers radial)
    collision: float  # summed penetration of neighbours into the hand / finger footprint (m)


def grasp_candidates(fp: Footprint, gripper: GripperGeometry, yaw_now: float) -> list[tuple[np.ndarray, float, str, float]]:
    """Candidate grasps (xy, yaw, kind, preference; lower preference is better) for an object footprint.

    Objects narrower than the open hand are gripped across their short axis ("body"): any yaw for round ones, at
    a few points along the long axis for boxes. Wider ones (bowls) are gripped on the rim, fingers radial.
    """
    g = gripper
    usable_opening = g.max_opening - 0.012  # leave room for approach errors
    out = []
    if 2 * fp.half_short <= usable_opening:
        round_obj = fp.half_long - fp.half_short < 0.006
        if round_obj:
            for k in range(12):
                theta = k * math.pi / 12
                axis = np.array([math.cos(theta), math.sin(theta)])
                out.append((fp.center_xy, closing_yaw(axis, yaw_now), "body", 0.0))
        else:
            # Across the short axis, at a few points along the long axis (flat boxes can be gripped off-centre).
            slack = max(fp.half_long - 0.02, 0.0)
            for frac in (0.0, -0.35, 0.35, -0.7, 0.7):
                xy = fp.center_xy + frac * slack * fp.long_axis
                out.append((xy, closing_yaw(fp.short_axis, yaw_now), "body", abs(frac) * 0.01))
        return out
    # Wider than the open hand (bowls): grip the rim, fingers radial, at the side freest of neighbours.
    radius = (fp.half_long + fp.half_short) / 2
    rim_inset = 0.012
    for k in range(16):
        theta = k * 2 * math.pi / 16
        axis = np.array([math.cos(theta), math.sin(theta)])
        xy = fp.center_xy + (radius - rim_inset) * axis
        out.append((xy, closing_yaw(axis, yaw_now), "rim", 0.0))
    return out

def grasp_height(fp: Footprint, kind: str, gripper: GripperGeometry) -> float:
    """Grip-site height for a grasp of `kind` on an object with footprint `fp`."""
    if kind == "rim":
        return float(fp.hi[2] - 0.022)
    # Low enough to hold the item stably, high enough that the pads clear the support, and never so low
    # that the palm (hand_bottom above the grip site) lands on the item's top: tall bottles are gripped
    # just below their top.
    lowest = fp.lo[2] + gripper.finger_below + 0.007
    z = float(np.clip(fp.lo[2] + 0.45 * fp.height, lowest, max(lowest, fp.hi[2] - 0.01)))
    return max(z, float(fp.hi[2] - gripper.hand_bottom + 0.008))

def grasp_collision(xy: np.ndarray, yaw: float, z: float, obstacles: np.ndarray, obj_half_u: float,
                    gripper: GripperGeometry) -> float:
    """Summed penetration (m) of obstacle points (N, 3) into the hand and finger volumes at grasp pose (xy, z,
    yaw): the hand (above `hand_bottom`) over its whole footprint, the fingers beside the object (|u| beyond
    `obj_half_u`) down to `finger_below` under the grip site."""
    g = gripper
    margin = 0.01
    axis_u = np.array([-math.sin(yaw), math.cos(yaw)])
    hand = points_in_oriented_rect(obstacles[:, :2], xy, axis_u, g.hand_half_u + margin, g.hand_half_v + margin)
    hand_pen = np.clip(obstacles[hand, 2] - (z + g.hand_bottom - margin), 0.0, None).sum()
    fingers = points_in_oriented_rect(obstacles[:, :2], xy, axis_u, g.max_opening / 2 + 0.025,
                                      g.finger_half_v + margin, u_min=max(obj_half_u - 0.01, 0.0))
    finger_pen = np.clip(obstacles[fingers, 2] - (z - g.finger_below - margin), 0.0, None).sum()
    return float(hand_pen + finger_pen)


# --------------------------------------------------------------------------------------------------
# Privileged scene state of one LIBERO pick-and-place task
# --------------------------------------------------------------------------------------------------
class PrivilegedScene:
    """What the scripted expert reads from the simulator: the eef pose, the collision clouds of every object
    and fixture (LIBERO's `obj_body_id`), the robot base, the Panda hand's geometry, and the reference points
    the goal predicate tests (body origins; the region site of an `In` goal).

    domain: the LIBERO problem env (robosuite env with `sim`, `robots`, `obj_body_id`); obj / target: object
    names; region_site: site name of an `In` goal's region, else None.
    """

    def __init__(self, domain, obj: str, target: str, region_site: str | None):
        self.sim = domain.sim
        model, data = self.sim.model._model, self.sim.data._data
        robot = domain.robots[0]
        self.eef_site = int(robot.eef_site_id)
        self.base_xy = np.array(data.xpos[int(model.body(robot.robot_model.root_body).id)][:2])
        self.clouds = {name: BodyCloud(model, int(bid), name) for name, bid in domain.obj_body_id.items()}
        self.obj, self.target = obj, target
        self.obj_body, self.target_body = int(domain.obj_body_id[obj]), int(domain.obj_body_id[target])
        self.region_site = None if region_site is None else int(model.site(region_site).id)
        geoms = robot.gripper.important_geoms
        ids = lambda names: [int(model.geom(n).id) for n in names]  # noqa: E731
        self._finger_geoms = (frozenset(ids(geoms["left_finger"])), frozenset(ids(geoms["right_finger"])))
        self._obj_geoms = frozenset(int(g) for g in self.clouds[obj].geom_ids)
        self.gripper = measure_gripper(
            model, data, self.eef_site,
            hand_geoms=ids([robot.gripper.naming_prefix + "hand_collision"]),
            finger_geoms=ids(geoms["left_finger"] + geoms["right_finger"]),
            pad_geoms=ids(geoms["left_fingerpad"] + geoms["right_fingerpad"]),
        )

    @property
    def _data(self):
        return self.sim.data._data

    def eef(self) -> tuple[np.ndarray, np.ndarray]:
        """Grip-site position (3,) and rotation matrix (3, 3) in the world frame."""
        return np.array(self._data.site_xpos[self.eef_site]), np.array(self._data.site_xmat[self.eef_site]).reshape(3, 3)

    def cloud(self, name: str) -> np.ndarray:
        return self.clouds[name].world(self._data)

    def obstacles(self, exclude: tuple[str, ...] = ()) -> np.ndarray:
        """Collision points (N, 3) of every object and fixture except `exclude` (the table/floor is not one)."""
        return np.concatenate([self.cloud(n) for n in self.clouds if n not in exclude], axis=0)

    def obj_ref_xy(self) -> np.ndarray:
        """The picked object's body origin: what LIBERO's In/On predicates test."""
        return np.array(self._data.xpos[self.obj_body][:2])

    def place_xy(self) -> np.ndarray:
        """Where the object's origin must end up: the region site (In) or the target's origin (On)."""
        if self.region_site is not None:
            return np.array(self._data.site_xpos[self.region_site][:2])
        return np.array(self._data.xpos[self.target_body][:2])

    def obj_bottom(self) -> float:
        return float(self.cloud(self.obj)[:, 2].min())

    def object_pinched(self) -> bool:
        """Both fingers touch the picked object (MuJoCo contacts): the physical test for holding it."""
        data = self._data
        touching = [False, False]
        for i in range(data.ncon):
            pair = {int(data.contact[i].geom1), int(data.contact[i].geom2)}
            if pair & self._obj_geoms:
                for side, finger in enumerate(self._finger_geoms):
                    touching[side] |= bool(pair & finger)
        return all(touching)
