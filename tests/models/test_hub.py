"""Hub ids for --vlm_path / --config_file_path / --pretrained_checkpoint, resolved offline (HF_HUB_OFFLINE=1,
set by tests/conftest.py) against a local cache laid out exactly as huggingface_hub lays it out
(tests/models/hub_cache.py): a synthetic released checkpoint and a synthetic Prismatic base VLM whose timm
towers come from timm's pretrained mechanism (timm/<tower>.<tag> repos in the same cache)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from huggingface_hub import constants

from prismatic.eval.config import EvalConfig
from prismatic.eval.policies import build_vla_policy
from prismatic.models import hub
from prismatic.models.hub import HubModelNotFound, base_vlm_allow_patterns, looks_like_hub_id, resolve_model_dir
from prismatic.models.loading import load_base_vlm, load_vla_checkpoint
from prismatic.models.processing import build_tiny_tokenizer
from prismatic.models.vla import VLAAdapter
from prismatic.training.config import FinetuneConfig
from prismatic.training.distributed import DistInfo
from prismatic.training.train import build_tokenizer, model_config_for, resolve_sources
from tests.eval.helpers import fake_observation, make_tiny_checkpoint
from tests.models.hub_cache import BASE_VLM, DINO_REPO, SIGLIP_REPO, add_base_vlm, add_snapshot, repo_folder

RELEASED = "VLA-Adapter/LIBERO-Spatial-Pro"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty hub cache that huggingface_hub (and timm through it) uses by default in this process."""
    path = tmp_path / "hf_home" / "hub"
    path.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(path))
    assert constants.HF_HUB_OFFLINE, "these tests must run offline (tests/conftest.py sets HF_HUB_OFFLINE=1)"
    return path


@pytest.fixture(scope="module")
def released_dir(tmp_path_factory):
    directory = make_tiny_checkpoint(tmp_path_factory.mktemp("released") / "LIBERO-Spatial-Pro")
    (directory / "README.md").write_text("synthetic stand-in for a released VLA-Adapter checkpoint\n")
    return directory


# ---------------------------------------------------------------- syntax / local paths
def test_hub_id_syntax():
    for ok in (RELEASED, BASE_VLM, "openvla/openvla-7b", "org/name@main", "org/name@0123abcd", "a/b.c_d-e"):
        assert looks_like_hub_id(ok), ok
    for bad in ("name", "/abs/path", "./rel/dir", "a/b/c", "org/", "/name", "org--x/name", "org/na..me", "org/name@",
                "runs/x--100_chkpt/", "~/models/x", "C:\\models\\x"):
        assert not looks_like_hub_id(bad), bad


def test_config_accepts_hub_ids_and_rejects_other_missing_paths(tmp_path):
    cfg = FinetuneConfig(model_preset="vla-adapter-pro", vlm_path=BASE_VLM, config_file_path=RELEASED)
    assert cfg.vlm_path == BASE_VLM  # kept as given (portable); resolved in train() / --dry_run
    for flag, kwargs in (("--vlm_path", dict(vlm_path=str(tmp_path / "nope"))),
                         ("--vlm_path", dict(vlm_path="pretrained/models/nope")),
                         ("--config_file_path", dict(vlm_path=BASE_VLM, config_file_path=str(tmp_path / "x")))):
        with pytest.raises(ValueError, match=f"{flag} does not exist"):
            FinetuneConfig(model_preset="vla-adapter-pro", **kwargs)


def test_existing_local_directory_wins_over_the_hub(tmp_path, cache, monkeypatch):
    local = tmp_path / "VLA-Adapter" / "LIBERO-Spatial-Pro"
    local.mkdir(parents=True)
    add_snapshot(cache, RELEASED, {"README.md": b"hub copy"})
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir(RELEASED, flag="--pretrained_checkpoint") == local.relative_to(tmp_path)
    with pytest.raises(FileNotFoundError, match="--vlm_path does not exist: a/b/c"):
        resolve_model_dir("a/b/c")


# ---------------------------------------------------------------- released checkpoint by hub id
def test_released_checkpoint_by_hub_id_loads_and_predicts(cache, released_dir, make_batch, tmp_path):
    snapshot = add_snapshot(cache, RELEASED, released_dir)
    assert (snapshot / "model.safetensors").is_symlink()  # the library's layout: snapshot links into blobs/
    resolved = resolve_model_dir(RELEASED, flag="--pretrained_checkpoint")
    assert resolved == snapshot

    by_id, by_dir = load_vla_checkpoint(RELEASED), load_vla_checkpoint(released_dir)
    batch = make_batch(by_dir.config, [30, 26])
    with torch.no_grad():
        a = by_id.model(**{k: v for k, v in batch.items() if k != "actions"}).predicted_actions
        b = by_dir.model(**{k: v for k, v in batch.items() if k != "actions"}).predicted_actions
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    # The evaluation flag: --pretrained_checkpoint <hub id> gives the same policy as the directory.
    common = dict(task_ids=[0], num_trials_per_task=1, device="cpu", local_log_dir=str(tmp_path), run_id="r")
    obs = [fake_observation(0), fake_observation(1)]
    hub_actions = build_vla_policy(EvalConfig(pretrained_checkpoint=RELEASED, **common)).predict(obs, ["a", "b"])
    dir_actions = build_vla_policy(EvalConfig(pretrained_checkpoint=str(released_dir), **common)).predict(obs, ["a", "b"])
    np.testing.assert_array_equal(hub_actions, dir_actions)


def test_revisions_branch_tag_commit_and_suffix(cache, released_dir):
    main = add_snapshot(cache, RELEASED, {"README.md": b"main"})
    tagged = add_snapshot(cache, RELEASED, {"README.md": b"v1"}, refs=("v1.0",))
    commit = tagged.name
    assert resolve_model_dir(RELEASED) == main
    assert resolve_model_dir(RELEASED, revision="v1.0") == tagged
    assert resolve_model_dir(f"{RELEASED}@v1.0") == tagged
    assert resolve_model_dir(f"{RELEASED}@{commit}", revision="main") == tagged  # the id's own @rev wins
    assert resolve_model_dir(RELEASED, revision=commit) == tagged
    with pytest.raises(HubModelNotFound, match="revision v2"):
        resolve_model_dir(RELEASED, revision="v2")


def test_offline_and_not_cached_is_one_clear_error(cache, tmp_path):
    common = dict(task_ids=[0], num_trials_per_task=1, device="cpu", local_log_dir=str(tmp_path), run_id="r")
    with pytest.raises(HubModelNotFound) as info:
        build_vla_policy(EvalConfig(pretrained_checkpoint="VLA-Adapter/LIBERO-Goal", **common))
    message = str(info.value)
    assert "--pretrained_checkpoint VLA-Adapter/LIBERO-Goal" in message
    assert "HF_HUB_OFFLINE=1" in message and str(cache) in message
    cfg = FinetuneConfig(model_preset="vla-adapter", vlm_path=BASE_VLM)
    with pytest.raises(HubModelNotFound, match=f"--vlm_path {BASE_VLM} \\(revision main\\)"):
        resolve_sources(cfg)


# ---------------------------------------------------------------- base VLM + timm towers by hub id
def test_base_vlm_by_hub_id_with_timm_pretrained_towers(cache, tmp_path, tiny_config, make_batch):
    config = tiny_config()
    torch.manual_seed(1)
    source = VLAAdapter(config, attn_implementation="sdpa")
    towers = add_base_vlm(cache, tmp_path, source)

    loaded = load_base_vlm(BASE_VLM, config, attn_implementation="sdpa")
    ours, theirs = loaded.merged_vlm_state_dict(), source.merged_vlm_state_dict()
    for key in theirs:
        if key.startswith(("projector.", "language_model.")):
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0, msg=key)  # the step-020792 file
    dino, siglip = towers[DINO_REPO], towers[SIGLIP_REPO]
    vb = loaded.vision_backbone
    torch.testing.assert_close(vb.featurizer.blocks[1].ls2.scale_factor, dino["blocks.1.ls2.gamma"], rtol=0, atol=0)
    torch.testing.assert_close(vb.fused_featurizer.blocks[0].attn.qkv.weight, siglip["blocks.0.attn.qkv.weight"],
                               rtol=0, atol=0)
    assert vb.featurizer.pos_embed.shape == (1, 16 + 0, config.vision.dino_embed_dim)  # timm resampled 5x5 -> 4x4
    batch = make_batch(config, [30, 26])
    with torch.no_grad():
        out = loaded(**{k: v for k, v in batch.items() if k != "actions"}).predicted_actions
    assert out.shape == (2, config.num_actions_chunk, config.action_dim) and torch.isfinite(out).all()

    # The trainer's resolution: --vlm_path <hub id> (tokenizer from the same snapshot), ids kept in the config.
    cfg = FinetuneConfig(model_preset="vla-adapter-pro", vlm_path=BASE_VLM)
    sources = resolve_sources(cfg)
    assert sources.vlm_dir == sources.tokenizer_dir == resolve_model_dir(BASE_VLM, kind="base_vlm")
    assert build_tokenizer(cfg, model_config_for(cfg), sources).vocab_size == build_tiny_tokenizer(
        tmp_path / "tok", vocab_size=config.llm.vocab_size).vocab_size


def test_missing_timm_tower_names_the_timm_repo(cache, tmp_path, tiny_config):
    config = tiny_config()
    source = VLAAdapter(config, attn_implementation="sdpa")
    add_base_vlm(cache, tmp_path, source, with_towers=False)
    with pytest.raises(FileNotFoundError) as info:
        load_base_vlm(BASE_VLM, config)
    message = str(info.value)
    assert DINO_REPO in message and SIGLIP_REPO in message and "LocalEntryNotFoundError" in message


def test_base_vlm_allow_patterns_take_the_last_checkpoint_only():
    files = ["config.json", "config.yaml", "checkpoints/step-009999-epoch-00-loss=0.7280.pt",
             "checkpoints/step-020792-epoch-01-loss=0.5268.pt", "checkpoints/step-019999-epoch-01-loss=1.4845.pt",
             "prism-qwen25-extra-dinosiglip-224px+0_5b.jsonl"]
    patterns = base_vlm_allow_patterns(files)
    assert "checkpoints/step-020792-epoch-01-loss=0.5268.pt" in patterns
    assert not any("009999" in p or "019999" in p or p.endswith(".jsonl") for p in patterns)
    with pytest.raises(ValueError, match="not a Prismatic base VLM"):
        base_vlm_allow_patterns(["config.json", "model.safetensors"])


# ---------------------------------------------------------------- torchrun: rank 0 first, then a barrier
@pytest.mark.parametrize("rank", [0, 1])
def test_rank_zero_downloads_before_the_others_read_the_cache(rank, monkeypatch, tmp_path):
    events = []

    def fake_download(repo_id, revision, kind, local_only):
        events.append(("download", local_only))
        return tmp_path

    monkeypatch.setattr(hub, "_download", fake_download)
    monkeypatch.setattr("prismatic.training.distributed.barrier", lambda info: events.append(("barrier",)))
    info = DistInfo(rank=rank, local_rank=rank, world_size=2, device=torch.device("cpu"))
    assert resolve_model_dir(RELEASED, dist_info=info) == tmp_path
    # rank 0 may use the network; the others only the cache, and only after rank 0 has finished.
    assert events == ([("download", False), ("barrier",)] if rank == 0 else [("barrier",), ("download", True)])


def test_rank_zero_failure_still_reaches_the_barrier(monkeypatch):
    events = []

    def failing(repo_id, revision, kind, local_only):
        raise OSError("boom")

    monkeypatch.setattr(hub, "_download", failing)
    monkeypatch.setattr("prismatic.training.distributed.barrier", lambda info: events.append("barrier"))
    info = DistInfo(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
    with pytest.raises(HubModelNotFound, match="--vlm_path VLA-Adapter/LIBERO-Spatial-Pro"):
        resolve_model_dir(RELEASED, dist_info=info)
    assert events == ["barrier"]  # the other ranks are not left waiting forever


def test_cache_layout_helper_matches_huggingface_hub(cache, released_dir):
    """The helper's cache is read by huggingface_hub's own cache scanner as a complete, valid repo."""
    from huggingface_hub import scan_cache_dir

    add_snapshot(cache, RELEASED, released_dir)
    info = scan_cache_dir(cache)
    assert not info.warnings
    (repo,) = info.repos
    assert repo.repo_id == RELEASED and repo.refs.keys() == {"main"}
    (revision,) = repo.revisions
    assert {f.file_name for f in revision.files} == {p.name for p in released_dir.iterdir()}
    assert repo_folder(cache, RELEASED).is_dir()
