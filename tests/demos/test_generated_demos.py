"""Scripted demonstrations end to end in the LIBERO simulator: the generator CLI writes an RLDS dataset that
matches the published LIBERO layout, whose demos succeed when replayed open-loop, whose summary adds up, and
whose frames are exactly the live frames. Simulator work runs in spawned workers: this pytest process reads
the RLDS data with tensorflow and must never run MuJoCo itself."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.sim, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "vla-scripts" / "generate_libero_demos.py"
SUITE, TASK, IMG = "libero_object", 1, 64
INSTRUCTION = "pick up the cream cheese and place it in the basket"
NAME = "libero_object_scripted_test"


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One demo of libero_object task 1 at 64 px, written by the CLI (1 worker)."""
    pytest.importorskip("libero")
    spec = importlib.util.spec_from_file_location("generate_libero_demos", SCRIPT)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path_factory.mktemp("demos")
    summary = cli.main(["--task_suite_name", SUITE, "--task_ids", str(TASK), "--demos_per_task", "1", "--out", str(out),
                        "--img_size", str(IMG), "--num_workers", "1", "--seed", "0", "--name", NAME])
    return out, out / NAME / "1.0.0", summary


def _episodes(path: Path) -> list[dict]:
    from prismatic.vla.datasets._tf import get_tfds

    tfds = get_tfds()
    builder = tfds.builder_from_directory(str(path))
    return list(tfds.as_numpy(builder.as_dataset(split="train"))), builder


def test_summary_is_consistent(generated):
    _, path, summary = generated
    assert json.loads((path / "generation_summary.json").read_text()) == summary
    task = summary["tasks"][str(TASK)]
    assert task["instruction"] == INSTRUCTION
    assert task["kept"] == 1 and task["missing"] == 0 and task["successful_attempts"] == 1
    assert task["attempts"] == task["successful_attempts"] + sum(task["failure_reasons"].values())
    episodes, _ = _episodes(path)
    assert summary["totals"]["kept"] == len(episodes) == 1
    assert summary["totals"]["transitions"] == sum(len(list(e["steps"])) for e in episodes)
    assert summary["replay"] == {"max_state_diff": 0.0, "episodes_rendered": 1}
    assert summary["timing"]["simulate_demos_per_min_per_worker"] > 0


def test_dataset_matches_the_published_libero_layout(generated):
    _, path, _ = generated
    episodes, builder = _episodes(path)
    features = builder.info.features
    obs = features["steps"]["observation"]
    assert set(features["steps"].keys()) == {"observation", "action", "reward", "discount", "is_first", "is_last",
                                              "is_terminal", "language_instruction"}
    assert set(obs.keys()) == {"image", "wrist_image", "state", "joint_state"}
    for key in ("image", "wrist_image"):
        assert obs[key].shape == (IMG, IMG, 3) and obs[key].dtype == np.uint8 and obs[key].encoding_format == "jpeg"
    assert obs["state"].shape == (8,) and obs["joint_state"].shape == (7,) and obs["state"].dtype == np.float32
    assert features["steps"]["action"].shape == (7,) and features["steps"]["action"].dtype == np.float32
    assert set(features["episode_metadata"].keys()) == {"file_path"}
    (episode,) = episodes
    steps = list(episode["steps"])
    T = len(steps)
    assert 60 < T <= 280  # a real pick-and-place, within the evaluation horizon of libero_object
    assert [s["is_first"] for s in steps] == [True] + [False] * (T - 1)
    assert [s["is_last"] for s in steps] == [s["is_terminal"] for s in steps] == [False] * (T - 1) + [True]
    assert all(s["language_instruction"].decode() == INSTRUCTION for s in steps)
    actions = np.stack([s["action"] for s in steps])
    assert set(np.unique(actions[:, 6])) == {-1.0, 1.0}  # env convention: -1 open, +1 close
    assert actions[0, 6] == -1.0 and np.abs(actions[:, :6]).max() <= 1.0
    noop = (np.linalg.norm(actions[:, :6], axis=1) < 1e-4) & (actions[:, 6] == np.r_[-1.0, actions[:-1, 6]])
    assert not noop.any()  # no-ops filtered like the published data
    state = np.stack([s["observation"]["state"] for s in steps])
    assert np.all(state[:, 6] >= -1e-3) and np.all(state[:, 7] <= 1e-3)  # finger qpos: left >= 0 >= right
    assert state[0, 6] - state[0, 7] > 0.07  # starts open (~0.078 apart)
    closed = actions[:, 6] > 0
    assert state[closed][-1, 6] - state[closed][-1, 7] < 0.06  # the object sits between the fingers
    # axis-angle of a top-down gripper: |rotation| close to pi
    assert np.all(np.abs(np.linalg.norm(state[:, 3:6], axis=1) - np.pi) < 0.5)
    meta = episode["episode_metadata"]["file_path"].decode()
    assert meta.startswith(f"scripted_expert/{SUITE}/task_{TASK:02d}/demo_0000/random:")


def test_demo_replayed_open_loop_from_its_init_state_succeeds(generated):
    """The stored (float32) actions, executed open-loop from the initial state the episode's file_path names,
    complete the task; and the stored first images are MuJoCo's raw frames rotated by 180 degrees."""
    from prismatic.sim.libero.demo_generation import parse_episode_file_path, replay_actions
    from prismatic.sim.libero.demo_runner import make_worker_pool

    _, path, _ = generated
    (episode,), _ = _episodes(path)
    steps = list(episode["steps"])
    actions = np.stack([s["action"] for s in steps])
    origin = parse_episode_file_path(episode["episode_metadata"]["file_path"].decode())
    with make_worker_pool(1) as pool:
        replay = pool.submit(replay_actions, SUITE, TASK, origin["init_label"], actions).result()
        frames = pool.submit(replay_actions, SUITE, TASK, origin["init_label"], actions[:0], 10, IMG).result()
    assert replay["success"] and replay["steps"] == len(actions)
    raw_agent, raw_wrist = frames["first_raw_frames"]
    for stored, raw in ((steps[0]["observation"]["image"], raw_agent), (steps[0]["observation"]["wrist_image"], raw_wrist)):
        err = {name: float(np.abs(stored.astype(np.float32) - candidate.astype(np.float32)).mean())
               for name, candidate in (("rot180", raw[::-1, ::-1]), ("raw", raw), ("vflip", raw[::-1]),
                                       ("hflip", raw[:, ::-1]))}
        assert err["rot180"] < 6.0  # equal up to JPEG
        assert err["rot180"] < 0.5 * min(err["raw"], err["vflip"], err["hflip"])  # and clearly not another flip


def test_pipeline_reads_the_generated_dataset(generated, monkeypatch, tmp_path):
    from prismatic.models.config import get_preset
    from prismatic.vla.datasets import RLDSDataset
    from prismatic.vla.datasets.registry import register_libero_dataset

    monkeypatch.setenv("PRISMATIC_CACHE", str(tmp_path / "stats_cache"))
    out, _, summary = generated
    register_libero_dataset(NAME)
    dataset = RLDSDataset(out, NAME, None, get_preset("tiny"), shuffle_buffer_size=1)
    stats = dataset.dataset_statistics[NAME]
    assert stats["num_trajectories"] == 1 and stats["num_transitions"] == summary["totals"]["transitions"]
    frame = next(iter(dataset))
    assert frame["images"].shape == (2, 56, 56, 3) and frame["images"].dtype == np.uint8  # tiny preset: 56 px
    assert frame["proprio"].shape == (8,) and frame["actions"].shape == (8, 7)
    assert set(np.unique(frame["actions"][:, 6])) <= {0.0, 1.0}  # gripper mapped to 1 = open / 0 = close
    assert frame["instruction"].decode() == INSTRUCTION


def test_rendered_frames_are_the_live_frames():
    """Rendering by re-execution reproduces the frames a live rollout with cameras on returns: bit-exact."""
    from prismatic.sim.libero.demo_generation import DemoJob
    from prismatic.sim.libero.demo_runner import make_worker_pool
    from tests.demos.helpers import live_and_replayed

    pytest.importorskip("libero")
    job = DemoJob(SUITE, 6, slot=0, seed=5)
    with make_worker_pool(1) as pool:
        out = pool.submit(live_and_replayed, job, 48, 20).result()
    live, replayed, record = out["live"], out["replayed"], out["record"]
    steps = replayed.episode["steps"]
    assert replayed.max_state_diff == 0.0 and replayed.steps == 20
    np.testing.assert_array_equal(live.actions, record.actions[:20])  # the expert acts identically with cameras
    np.testing.assert_array_equal(live.images, steps["image"])
    np.testing.assert_array_equal(live.wrist_images, steps["wrist_image"])
    np.testing.assert_array_equal(live.state, steps["state"])
    np.testing.assert_array_equal(live.joint_state, steps["joint_state"])
    assert live.images.std() > 10  # real pictures, not blank frames
