import errno
import hashlib
import json
import os
import re
import socket
import subprocess

import pytest
import torch

from prismatic.models import manifest
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
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="is missing model.safetensors"):
        ckpt.load_checkpoint(path, need_lora=False, need_merged=True)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="corrupt checkpoint file .*bad.pt"):
        ckpt.torch_load(bad)
    bad.rename(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="corrupt checkpoint file .*bad.safetensors"):
        ckpt.safetensors_load(tmp_path / "bad.safetensors")


# ------------------------------------------------------------------ item 2: the manifest catches damage
def _flip_byte(path, offset_from_end=100):
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x40
    path.write_bytes(bytes(data))


def test_manifest_lists_every_file_with_its_sha256(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, "run", _payload(1))
    manifest = json.loads((path / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert sorted(manifest["files"]) == [f for f in on_disk if f != "manifest.json"]
    for name, entry in manifest["files"].items():  # hashlib on the whole file, independent of the chunked reader
        data = (path / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name


@pytest.mark.parametrize("victim", ["training_state.pt", "model.safetensors", "action_head--1_checkpoint.pt",
                                    "finetune_config.json"])
def test_flipped_bytes_are_refused_naming_the_file(tmp_path, victim):
    path = ckpt.save_checkpoint(tmp_path, "run", _payload(1))
    target = path / victim
    _flip_byte(target, offset_from_end=min(100, target.stat().st_size))
    with pytest.raises(ValueError, match=f"damaged: {re.escape(victim)} \\(sha256 differs"):
        ckpt.load_checkpoint(path, need_lora=False, need_merged=True)


def test_truncated_file_is_refused_naming_the_file(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, "run", _payload(1))
    target = path / "training_state.pt"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(ValueError, match="damaged: training_state.pt \\(\\d+ bytes, the manifest says"):
        ckpt.load_checkpoint(path, need_lora=False, need_merged=True)


def test_missing_proprio_projector_is_an_error_not_a_fresh_init(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, "run", _payload(1))
    (path / "proprio_projector--1_checkpoint.pt").unlink()
    with pytest.raises(FileNotFoundError, match="missing proprio_projector--1_checkpoint.pt"):
        ckpt.load_checkpoint(path, need_lora=False, need_merged=True)
    # ... even when the manifest went with it (the run's config says it trained a projector)
    (path / "manifest.json").unlink()
    manifest.write_manifest(path)
    with pytest.raises(FileNotFoundError, match="proprio_projector"):
        ckpt.load_checkpoint(path, need_lora=False, need_merged=True)


def test_missing_manifest_in_our_checkpoint_is_an_error_released_ones_need_none(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, "run", _payload(1))
    (path / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing manifest.json"):
        ckpt.load_checkpoint(path, need_lora=False, need_merged=True)
    released = tmp_path / "released"
    released.mkdir()
    (released / "model.safetensors").write_bytes(b"x")
    (released / "config.json").write_text("{}")
    assert manifest.verify_manifest(released) is False  # nothing to verify: not ours


# ------------------------------------------------------------------ item 1: never a non-finite checkpoint
def test_non_finite_payload_is_never_written_and_the_message_is_true(tmp_path):
    with pytest.raises(FloatingPointError, match="action_head: model.w.*no checkpoint of run 'run' was written"):
        ckpt.save_checkpoint(tmp_path, "run", _payload(1, value=float("nan")))
    ckpt.save_checkpoint(tmp_path, "run", _payload(1))
    with pytest.raises(FloatingPointError, match="the last intact checkpoint is .*run--1_chkpt \\(step 1\\)"):
        ckpt.save_checkpoint(tmp_path, "run", _payload(2, value=float("inf")))
    assert list(ckpt.list_checkpoints(tmp_path, "run")) == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["run--1_chkpt"]


# ------------------------------------------------------------------ item 6: temp dirs, full disk
def test_stale_temp_dirs_of_the_run_are_removed(tmp_path):
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [tmp_path / f".tmp-run--4_chkpt-{host}-{dead.pid}", tmp_path / f".stale-run--2_chkpt-{host}-{dead.pid}",
             tmp_path / f".tmp-run--6_chkpt-othernode-{os.getpid()}"]
    keep = [tmp_path / f".tmp-run--8_chkpt-{host}-{os.getppid()}",  # a live writer on this host
            tmp_path / f".tmp-other--4_chkpt-{host}-{dead.pid}"]  # another run's
    for p in stale + keep:
        p.mkdir()
        (p / "training_state.pt").write_bytes(b"partial")
    assert sorted(ckpt.remove_stale_temp_dirs(tmp_path, "run")) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_interrupted_save_leaves_no_temp_dir(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, "run", _payload(2, fail=True))
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_one_line_naming_the_path_and_the_space_needed(tmp_path, monkeypatch):
    first = ckpt.save_checkpoint(tmp_path, "run", _payload(1))
    size = sum(p.stat().st_size for p in first.rglob("*") if p.is_file())

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(OSError) as info:
        ckpt.save_checkpoint(tmp_path, "run", _payload(2))
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC and "\n" not in message
    assert f"writing checkpoint {tmp_path / 'run--2_chkpt'}" in message
    assert f"takes {size / 2**20:.1f} MiB (the last one, run--1_chkpt)" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run--1_chkpt"]  # the partial directory is gone


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 400 KiB tmpfs (root only; skipped where mounting is not permitted)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _big_payload(step):
    p = _payload(step)
    p.merged_vlm = {"projector.fc1.weight": torch.ones(37_500)}  # 150 kB: two fit, the third does not
    return p


def test_full_tmpfs_every_retry_fails_cleanly(small_tmpfs):
    ckpt.save_checkpoint(small_tmpfs, "run", _big_payload(1))
    ckpt.save_checkpoint(small_tmpfs, "run", _big_payload(2))
    for _ in range(3):  # retries do not pile up partial directories
        with pytest.raises(OSError, match="No space left on device writing checkpoint .*run--3_chkpt: a checkpoint "
                                          "of this run takes .* MiB \\(the last one, run--2_chkpt\\)"):
            ckpt.save_checkpoint(small_tmpfs, "run", _big_payload(3))
        assert sorted(p.name for p in small_tmpfs.iterdir()) == ["run--1_chkpt", "run--2_chkpt"]
    loaded = ckpt.load_checkpoint(ckpt.find_checkpoint(small_tmpfs, "run"), need_lora=False, need_merged=True)
    assert loaded.training_state["step"] == 2


# ------------------------------------------------------------------ item 3: never clobber an earlier run
def test_fresh_run_over_an_existing_run_is_refused_or_moved_aside(tmp_path):
    assert ckpt.check_fresh_run(tmp_path, "run", overwrite=False) == []
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    # no checkpoint yet (a crash before the first save): nothing to resume, the old logs are moved aside
    assert ckpt.check_fresh_run(tmp_path, "run", overwrite=False) == [tmp_path / "run"]
    ckpt.save_checkpoint(tmp_path, "run", _payload(2))
    with pytest.raises(FileExistsError, match="checkpoints at steps \\[2\\]\\); pass --resume True .*--run_id_note "
                                              ".*--overwrite True"):
        ckpt.check_fresh_run(tmp_path, "run", overwrite=False)
    found = ckpt.check_fresh_run(tmp_path, "run", overwrite=True)
    aside = ckpt.move_run_aside(tmp_path, "run", found)
    assert aside.name.startswith("run.overwritten-")
    assert sorted(p.name for p in aside.iterdir()) == ["run", "run--2_chkpt"]
    assert (aside / "run" / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert ckpt.list_checkpoints(tmp_path, "run") == {} and ckpt.check_fresh_run(tmp_path, "run", False) == []
