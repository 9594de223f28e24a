"""The generated dataset (learnable content, idempotent creation, CLI) and the RLDS writer."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests.data.common import make_dataset


def _colour_centroid(image: np.ndarray, rgb) -> np.ndarray | None:
    """Workspace xy of the pixels showing exactly `rgb` in a top-down agentview image (table = [-1, 1]^2)."""
    rows, cols = np.nonzero(np.all(image == np.asarray(rgb, np.uint8), axis=-1))
    if len(rows) == 0:
        return None
    size = image.shape[0]
    return np.array([(cols.mean() + 0.5) / size * 2 - 1, 1 - (rows.mean() + 0.5) / size * 2])


def test_actions_follow_the_named_object_seen_in_the_image():
    """An oracle that only looks at the image (where is the named colour?) and the state (where is the gripper?)
    predicts the sign of the approach actions; without the instruction (a wrong colour) it cannot."""
    from prismatic.vla.datasets.synthetic import PALETTE, generate_episode, task_instruction

    agree, agree_wrong = [], []
    for task in range(4):
        for e in range(3):
            ep = generate_episode(task, 4, np.random.default_rng([11, task, e]), 128)
            colour = dict(PALETTE)[task_instruction(task).split()[3]]
            wrong = PALETTE[(task + 1) % 4][1]
            target = _colour_centroid(ep["steps"]["image"][0], colour)
            decoy = _colour_centroid(ep["steps"]["image"][0], wrong)
            assert target is not None and decoy is not None
            for t in range(len(ep["steps"]["action"])):
                action, eef = ep["steps"]["action"][t], ep["steps"]["state"][t][:2]
                if action[6] > 0:  # approach phase only (gripper open = -1)
                    break
                for axis in range(2):
                    if abs(target[axis] - eef[axis]) > 0.15:  # clearly off target on this axis
                        agree.append(np.sign(action[axis]) == np.sign(target[axis] - eef[axis]))
                        agree_wrong.append(np.sign(action[axis]) == np.sign(decoy[axis] - eef[axis]))
    assert len(agree) > 50
    assert np.mean(agree) > 0.95 and np.mean(agree_wrong) < 0.8


def test_episodes_have_the_documented_structure():
    from prismatic.vla.datasets.synthetic import generate_episodes

    episodes = list(generate_episodes(num_tasks=2, episodes_per_task=3, image_size=32, seed=5))
    assert [e["language_instruction"] for e in episodes[:2]] == ["pick up the red cube", "pick up the green cube"]
    for ep in episodes:
        steps = ep["steps"]
        T = len(steps["action"])
        assert 15 <= T <= 45
        assert steps["image"].shape == (T, 32, 32, 3) and steps["state"].shape == (T, 8)
        gripper = steps["action"][:, 6]
        assert gripper[0] == -1 and gripper[-1] == 1 and np.all(np.diff(gripper) >= 0)  # open ... then close
        assert steps["state"][-1, 2] > 0.7  # ends lifted
    again = list(generate_episodes(num_tasks=2, episodes_per_task=3, image_size=32, seed=5))
    np.testing.assert_array_equal(episodes[4]["steps"]["action"], again[4]["steps"]["action"])


def test_ensure_synthetic_dataset_is_idempotent_and_refuses_other_parameters(tmp_path):
    from prismatic.vla.datasets.synthetic import SYNTHETIC_PARAMS_FILE, ensure_synthetic_dataset

    kwargs = dict(num_tasks=2, episodes_per_task=1, image_size=32, seed=0)
    path = ensure_synthetic_dataset(tmp_path, name="libero_synthetic_small", **kwargs)
    record = path / "libero_synthetic_small-train.tfrecord-00000-of-00001"
    stamp = record.stat().st_mtime_ns
    assert ensure_synthetic_dataset(tmp_path, name="libero_synthetic_small", **kwargs) == path
    assert record.stat().st_mtime_ns == stamp  # not rewritten
    assert json.loads((path / SYNTHETIC_PARAMS_FILE).read_text())["num_tasks"] == 2
    with pytest.raises(ValueError, match="was generated with"):
        ensure_synthetic_dataset(tmp_path, name="libero_synthetic_small", **{**kwargs, "seed": 1})
    with pytest.raises(ValueError, match="unknown dataset name 'my_data'"):
        ensure_synthetic_dataset(tmp_path, name="my_data", **kwargs)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_cli_writes_a_dataset_the_pipeline_reads(tmp_path, model_config, capsys):
    script = Path(__file__).resolve().parents[2] / "vla-scripts" / "make_synthetic_libero_rlds.py"
    spec = importlib.util.spec_from_file_location("make_synthetic_libero_rlds", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path), "--tasks", "2", "--episodes-per-task", "2", "--name", "libero_synthetic_cli",
                 "--image-size", "48", "--seed", "3"])
    assert "synthetic dataset ready" in capsys.readouterr().out
    dataset = make_dataset(tmp_path, model_config, name="libero_synthetic_cli")
    assert sorted(dataset.selected_episodes["libero_synthetic_cli"]) == ["pick up the green cube",
                                                                        "pick up the red cube"]
    assert dataset.dataset_statistics["libero_synthetic_cli"]["num_trajectories"] == 4


def _episode(T=3, size=16, **overrides):
    steps = {"image": np.zeros((T, size, size, 3), np.uint8), "wrist_image": np.zeros((T, size, size, 3), np.uint8),
             "state": np.zeros((T, 8), np.float32), "joint_state": np.zeros((T, 7), np.float32),
             "action": np.zeros((T, 7), np.float32)}
    steps.update(overrides)
    return {"steps": steps, "language_instruction": "do it", "file_path": "x.hdf5"}


def test_writer_validates_input_and_never_overwrites(tmp_path):
    from prismatic.vla.datasets.rlds_writer import write_rlds_dataset

    with pytest.raises(ValueError, match=r"episode 1: steps\['state'\] must be float32 \(3, 8\), got float32 \(3, 9\)"):
        write_rlds_dataset(tmp_path, "w", [_episode(), _episode(state=np.zeros((3, 9), np.float32))], 16)
    with pytest.raises(ValueError, match="no episodes"):
        write_rlds_dataset(tmp_path, "w", [], 16)
    assert not (tmp_path / "w").exists() or not (tmp_path / "w" / "1.0.0").exists()
    path = write_rlds_dataset(tmp_path, "w", [_episode(T=2), _episode(T=5)], 16)
    assert (path / "dataset_info.json").is_file()
    with pytest.raises(FileExistsError, match="already exists"):
        write_rlds_dataset(tmp_path, "w", [_episode()], 16)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
