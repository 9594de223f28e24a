"""The scripted expert's geometry and control math, without the simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prismatic.sim.libero.geometry import (
    GEOM_BOX,
    GEOM_CYLINDER,
    GripperGeometry,
    closing_yaw,
    distance_to_segment,
    footprint,
    grasp_candidates,
    grasp_collision,
    grasp_height,
    gripper_yaw,
    points_in_oriented_rect,
    primitive_points,
    rotation_error,
    topdown_rotation,
)
from prismatic.sim.libero.scripted_expert import (
    ExpertConfig,
    ExpertStyle,
    UnsupportedTaskError,
    check_task_supported,
)

# The Panda hand as measured in the simulator (GripperGeometry of robosuite 1.4's PandaGripper).
PANDA = GripperGeometry(hand_half_u=0.104, hand_half_v=0.0316, hand_bottom=0.031, finger_below=0.0092,
                        max_opening=0.0764, finger_half_v=0.0105)


def _axis_angle_matrix(v: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_rotation_error_is_the_world_frame_delta_osc_applies():
    rng = np.random.default_rng(0)
    for _ in range(200):
        r_cur, r_des = _random_rotation(rng), _random_rotation(rng)
        delta = rotation_error(r_des, r_cur)
        assert np.linalg.norm(delta) <= math.pi + 1e-9
        np.testing.assert_allclose(_axis_angle_matrix(delta) @ r_cur, r_des, atol=1e-9)
    # Near 180 degrees (the numerically delicate branch).
    r = _axis_angle_matrix(np.array([0.0, 0.0, math.pi - 1e-7]))
    np.testing.assert_allclose(_axis_angle_matrix(rotation_error(r, np.eye(3))), r, atol=1e-6)
    np.testing.assert_array_equal(rotation_error(np.eye(3), np.eye(3)), np.zeros(3))


def test_topdown_gripper_yaw_conventions():
    for yaw in np.linspace(-3.0, 3.0, 13):
        rot = topdown_rotation(yaw)
        assert np.allclose(rot.T @ rot, np.eye(3)) and np.isclose(np.linalg.det(rot), 1.0)
        np.testing.assert_allclose(rot[:, 2], [0, 0, -1], atol=1e-12)  # approach axis points down
        assert math.isclose(gripper_yaw(rot), yaw, abs_tol=1e-9)
    # At yaw 0 the fingers close along world y (the Panda's start pose).
    np.testing.assert_allclose(topdown_rotation(0.0)[:, 0], [0, 1, 0], atol=1e-12)
    for axis in ([1.0, 0.0], [0.6, 0.8], [-0.28, 0.96]):
        yaw = closing_yaw(np.array(axis), near_yaw=0.3)
        closing = topdown_rotation(yaw)[:, 0][:2]
        assert abs(abs(closing @ np.array(axis)) - 1.0) < 1e-9  # closing axis parallel to the requested one
        other = yaw + math.pi
        assert abs(math.remainder(yaw - 0.3, 2 * math.pi)) <= abs(math.remainder(other - 0.3, 2 * math.pi))


def test_footprint_of_a_rotated_box():
    pts = primitive_points(GEOM_BOX, np.array([0.04, 0.02, 0.01]))  # 8 x 4 x 2 cm box
    theta = 0.5
    rz = np.array([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]])
    world = pts @ rz.T + np.array([0.3, -0.1, 0.01])
    fp = footprint(world)
    assert math.isclose(fp.half_long, 0.04, abs_tol=1e-9) and math.isclose(fp.half_short, 0.02, abs_tol=1e-9)
    assert abs(abs(fp.long_axis @ np.array([math.cos(theta), math.sin(theta)])) - 1) < 1e-9
    np.testing.assert_allclose(fp.center_xy, [0.3, -0.1], atol=1e-9)
    assert math.isclose(fp.height, 0.02, abs_tol=1e-12) and math.isclose(fp.lo[2], 0.0, abs_tol=1e-12)
    cyl = primitive_points(GEOM_CYLINDER, np.array([0.03, 0.05]))
    assert math.isclose(np.abs(cyl[:, :2]).max(), 0.03) and math.isclose(np.abs(cyl[:, 2]).max(), 0.05)
    with pytest.raises(ValueError, match="no finite extent"):
        primitive_points(0, np.array([1.0, 1.0, 1.0]))


def test_grasp_candidates_follow_the_object_shape():
    box = footprint(primitive_points(GEOM_BOX, np.array([0.04, 0.02, 0.009])) + [0, 0, 0.009])  # butter
    cands = grasp_candidates(box, PANDA, yaw_now=0.0)
    assert {c[2] for c in cands} == {"body"}
    for xy, yaw, _, _ in cands:  # across the short (y) axis, somewhere along the long (x) axis
        assert abs(abs(topdown_rotation(yaw)[:, 0][:2] @ np.array([0.0, 1.0])) - 1) < 1e-9
        assert abs(xy[1]) < 1e-9 and abs(xy[0]) < 0.04
    flat_z = grasp_height(box, "body", PANDA)
    assert box.lo[2] + PANDA.finger_below < flat_z < box.hi[2]  # pads above the floor, below the top
    tall = footprint(primitive_points(GEOM_CYLINDER, np.array([0.02, 0.07])) + [0, 0, 0.07])  # a 14 cm bottle
    assert grasp_height(tall, "body", PANDA) >= tall.hi[2] - PANDA.hand_bottom  # palm stays above its top
    assert len({round(c[1], 6) for c in grasp_candidates(tall, PANDA, 0.0)}) > 6  # round: many yaws
    bowl = footprint(primitive_points(GEOM_CYLINDER, np.array([0.054, 0.025])) + [0.1, 0.2, 0.925])
    rims = grasp_candidates(bowl, PANDA, yaw_now=0.0)
    assert {c[2] for c in rims} == {"rim"}
    for xy, yaw, _, _ in rims:  # on the rim, fingers radial
        radial = (xy - bowl.center_xy) / np.linalg.norm(xy - bowl.center_xy)
        assert 0.035 < np.linalg.norm(xy - bowl.center_xy) < 0.054
        assert abs(abs(topdown_rotation(yaw)[:, 0][:2] @ radial) - 1) < 1e-9
    assert grasp_height(bowl, "rim", PANDA) < bowl.hi[2]


def test_grasp_collision_sees_taller_neighbours_only():
    xy, yaw, z = np.zeros(2), 0.0, 0.04  # closing axis = world y
    tall_neighbour = primitive_points(GEOM_BOX, np.array([0.02, 0.02, 0.07])) + [0.0, 0.09, 0.07]  # under the hand
    low_neighbour = primitive_points(GEOM_BOX, np.array([0.02, 0.02, 0.005])) + [0.0, 0.09, 0.005]
    beside = primitive_points(GEOM_BOX, np.array([0.02, 0.02, 0.07])) + [0.10, 0.0, 0.07]  # off the footprint
    assert grasp_collision(xy, yaw, z, tall_neighbour, 0.02, PANDA) > 0.05
    assert grasp_collision(xy, yaw, z, low_neighbour, 0.02, PANDA) == 0.0
    assert grasp_collision(xy, yaw, z, beside, 0.02, PANDA) == 0.0
    # Rotated by 90 degrees the hand spans world x and hits the box "beside" instead.
    assert grasp_collision(xy, math.pi / 2, z, beside, 0.02, PANDA) > 0.05


def test_point_helpers():
    pts = np.array([[0.0, 0.0], [0.05, 0.0], [0.0, 0.05], [0.2, 0.0]])
    inside = points_in_oriented_rect(pts, np.zeros(2), np.array([1.0, 0.0]), 0.1, 0.01)
    assert inside.tolist() == [True, True, False, False]
    ring = points_in_oriented_rect(pts, np.zeros(2), np.array([1.0, 0.0]), 0.1, 0.01, u_min=0.02)
    assert ring.tolist() == [False, True, False, False]
    np.testing.assert_allclose(distance_to_segment(pts, np.zeros(2), np.array([0.1, 0.0])), [0, 0, 0.05, 0.1])


def test_style_and_config():
    assert ExpertStyle.sample(np.random.default_rng(0), 0.0) == ExpertStyle.nominal()
    styles = [ExpertStyle.sample(np.random.default_rng(s), 1.0) for s in range(50)]
    assert len({s.hover_height for s in styles}) == 50  # randomised ...
    assert all(0.07 <= s.hover_height <= 0.16 and 0.65 <= s.max_speed <= 1.0 and 0.0 <= s.noise_std <= 0.12
               for s in styles)  # ... within the documented ranges
    half = [ExpertStyle.sample(np.random.default_rng(s), 0.5) for s in range(50)]
    assert max(abs(s.hover_height - 0.10) for s in half) <= 0.5 * 0.06 + 1e-12
    with pytest.raises(ValueError, match="diversity must be in"):
        ExpertConfig(diversity=1.5)
    with pytest.raises(ValueError, match="phase_slack_steps lacks phases"):
        ExpertConfig(phase_slack_steps={"approach": 10})


def test_task_support_is_explicit():
    check_task_supported("libero_object", 9)
    check_task_supported("libero_spatial", 4)
    with pytest.raises(UnsupportedTaskError, match="libero_goal is not supported.*drawers"):
        check_task_supported("libero_goal", 0)
    with pytest.raises(UnsupportedTaskError, match="libero_object task 10 is not supported"):
        check_task_supported("libero_object", 10)
