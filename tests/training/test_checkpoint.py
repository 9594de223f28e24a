import pytest
import torch

from prismatic.training import checkpoint as ckpt


class _Tok:
    def __init__(self, fail=False):
        self.fail = fail

    def save_pretrained(self, d):
        if self.fail:
            raise KeyboardInterrupt("killed during save")  # what a SIGINT mid-save looks like
        (__import__("pathlib").Path(d) / "tokenizer.json").write_text("{}")


def _payload(step, fail=False, value=1.0):
    return ckpt.CheckpointPayload(
        step=step,
        finetune_config={"step_marker": step},
        vla_config={},
        dataset_statistics={"d": {"action": {"q01": [0.0], "q99": [1.0]}, "proprio": {"q01": [0.0], "q99": [1.0]}}},
        tokenizer=_Tok(fail),
        action_head={"model.w": torch.full((2,), value)},
        proprio_projector={"fc1.weight": torch.ones(1)},
        action_queries=torch.ones(3, 2),
        lora_adapter=None,
        lora_config=None,
        merged_vlm={"projector.fc1.weight": torch.ones(2)},
        training_state={"step": step, "optimizer": {}, "x": torch.arange(3)},
    )


def test_save_load_round_trip_and_latest(tmp_path):
    ckpt.save_checkpoint(tmp_path, "run", _payload(5))
    ckpt.save_checkpoint(tmp_path, "run", _payload(10, value=2.0))
    assert sorted(ckpt.list_checkpoints(tmp_path, "run")) == [5, 10]
    latest = ckpt.find_checkpoint(tmp_path, "run")
    assert latest.name == "run--10_chkpt"
    loaded = ckpt.load_checkpoint(latest, need_lora=False, need_merged=True)
    assert torch.equal(loaded.action_head["model.w"], torch.full((2,), 2.0))
    assert torch.equal(loaded.training_state["x"], torch.arange(3))
    assert (latest / "action_head--10_checkpoint.pt").exists()
    assert ckpt.find_checkpoint(tmp_path, "run", step=5).name == "run--5_chkpt"
    with pytest.raises(FileNotFoundError, match="available steps: \\[5, 10\\]"):
        ckpt.find_checkpoint(tmp_path, "run", step=7)


def test_keep_only_latest(tmp_path):
    ckpt.save_checkpoint(tmp_path, "run", _payload(1), keep_only_latest=True)
    ckpt.save_checkpoint(tmp_path, "run", _payload(2), keep_only_latest=True)
    assert list(ckpt.list_checkpoints(tmp_path, "run")) == [2]


def test_killed_save_leaves_previous_checkpoint_loadable(tmp_path):
    ckpt.save_checkpoint(tmp_path, "run", _payload(1), keep_only_latest=True)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, "run", _payload(2, fail=True), keep_only_latest=True)
    # the half-written directory is hidden and never matched; the previous checkpoint is intact
    assert list(ckpt.list_checkpoints(tmp_path, "run")) == [1]
    loaded = ckpt.load_checkpoint(ckpt.find_checkpoint(tmp_path, "run"), need_lora=False, need_merged=True)
    assert loaded.training_state["step"] == 1


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint of run 'run'"):
        ckpt.find_checkpoint(tmp_path, "run")
    path = ckpt.save_checkpoint(tmp_path, "run", _payload(3))
    (path / "training_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(RuntimeError, match="corrupt checkpoint file .*training_state.pt"):
        ckpt.load_checkpoint(path, need_lora=False, need_merged=True)
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        ckpt.load_checkpoint(path, need_lora=False, need_merged=True)
