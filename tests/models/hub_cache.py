"""Write a local Hugging Face hub cache laid out exactly as huggingface_hub lays it out (no network needed).

    <cache>/models--<org>--<name>/
        blobs/<etag>                      file contents; etag = sha256 for LFS files (weights), git blob sha1 else
        snapshots/<commit>/<path>         relative symlinks into ../../blobs/<etag>
        refs/<revision>                   the commit hash (no newline)

`<cache>` is what huggingface_hub calls HF_HUB_CACHE (default $HF_HOME/hub).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

LFS_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth")
BASE_VLM = "Stanford-ILIAD/prism-qwen25-extra-dinosiglip-224px-0_5b"
# timm's hub repos for the towers' pretrained tags (what timm.create_model(pretrained=True) fetches).
DINO_REPO = "timm/vit_large_patch14_reg4_dinov2.lvd142m"
SIGLIP_REPO = "timm/vit_so400m_patch14_siglip_224.webli"  # the upstream (timm 0.9.10) default tag


def _etag(rel_path: str, data: bytes) -> str:
    if rel_path.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id


def repo_folder(cache: Path, repo_id: str) -> Path:
    return Path(cache) / ("models--" + repo_id.replace("/", "--"))


def add_snapshot(cache: str | Path, repo_id: str, files: dict[str, bytes] | Path, refs: tuple[str, ...] = ("main",),
                 commit: str | None = None) -> Path:
    """Add one commit of `repo_id` to the cache: `files` maps repo paths to contents, or is a directory whose
    files (recursively) are the repo. `refs` (branches / tags) point at the commit. Returns the snapshot dir."""
    if isinstance(files, (str, Path)):
        root = Path(files)
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    etags = {path: _etag(path, data) for path, data in files.items()}
    if commit is None:
        commit = hashlib.sha1("".join(f"{p}:{e}\n" for p, e in sorted(etags.items())).encode()).hexdigest()
    folder = repo_folder(Path(cache), repo_id)
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = folder / "snapshots" / commit
    for path, data in files.items():
        blob = folder / "blobs" / etags[path]
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        ref_file = folder / "refs" / ref
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(commit)
    return snapshot


def timm_tower_files(config, img_size: int) -> dict[str, dict[str, torch.Tensor]]:
    """timm-format (gamma names) tiny tower weights at another grid, as timm's pretrained files are."""
    import timm

    v = config.vision
    out = {}
    for repo, model_id, dims in ((DINO_REPO, v.dino_model_id, (v.dino_embed_dim, v.dino_depth, v.dino_num_heads)),
                                 (SIGLIP_REPO, v.siglip_model_id,
                                  (v.siglip_embed_dim, v.siglip_depth, v.siglip_num_heads))):
        tower = timm.create_model(model_id, pretrained=False, num_classes=0, img_size=img_size, embed_dim=dims[0],
                                  depth=dims[1], num_heads=dims[2])
        out[repo] = {k: t.contiguous() for k, t in tower.state_dict().items()}
    return out


def add_base_vlm(cache, tmp_path, source, with_towers: bool = True) -> dict:
    """A synthetic Prismatic base VLM repo (two native .pt checkpoints without vision weights + tokenizer) from
    `source` (a VLAAdapter; the higher step holds its weights), and timm tower repos with tiny weights.
    Returns {timm repo: timm-format state}."""
    from prismatic.models.processing import build_tiny_tokenizer
    from prismatic.models.vla import VLAAdapter
    from tests.models.test_base_vlm import native_checkpoint

    staging = tmp_path / "staging_vlm"
    (staging / "checkpoints").mkdir(parents=True)
    # Two checkpoints like the released repo: the loader must take the highest step.
    older = native_checkpoint(VLAAdapter(source.config, attn_implementation="sdpa"), with_vision=False)
    torch.save(older, staging / "checkpoints" / "step-009999-epoch-00-loss=0.7280.pt")
    torch.save(native_checkpoint(source, with_vision=False), staging / "checkpoints" / "step-020792-epoch-01-loss=0.5268.pt")
    build_tiny_tokenizer(staging, vocab_size=source.config.llm.vocab_size)
    (staging / "config.json").write_text('{"model": {"model_id": "prism-qwen25-extra-dinosiglip-224px+0_5b"}}')
    add_snapshot(cache, BASE_VLM, staging)
    towers = {}
    if with_towers:
        towers = timm_tower_files(source.config, img_size=70)  # 5x5 grid; the model uses 4x4: resampled
        for repo, state in towers.items():
            tower_dir = tmp_path / repo.replace("/", "_")
            tower_dir.mkdir()
            save_file(state, str(tower_dir / "model.safetensors"))
            add_snapshot(cache, repo, tower_dir)
    return towers
