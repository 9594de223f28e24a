"""In-worker test policies (imported inside the spawned simulator workers, so: no tensorflow here)."""

from __future__ import annotations

import os

import numpy as np


class _DownExpert:
    """Reads privileged simulator state (the eef site position from MuJoCo) and moves the gripper down."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.resets = 0

    def reset(self, env) -> None:
        self.resets += 1

    def act(self, env, obs) -> np.ndarray:
        robot = env.env.robots[0]
        eef = np.asarray(env.sim.data.site_xpos[robot.eef_site_id])
        action = np.zeros(7)
        action[2] = np.clip((eef[2] - 0.05 - eef[2]) / 0.05, -1, 1)  # down by 5 cm per step at most
        action[6] = -1.0
        return action


class _CrashingExpert(_DownExpert):
    def act(self, env, obs) -> np.ndarray:
        os._exit(3)  # a hard crash of the worker process (as a segfault in the renderer would be)


def make_stub_expert(env, seed: int) -> _DownExpert:
    return _DownExpert(seed)


def make_crashing_expert(env, seed: int) -> _CrashingExpert:
    return _CrashingExpert(seed)
