"""Checkpoint I/O for the VLA-Adapter model.

Released / our checkpoint directory (facts §5.2; our training checkpoints write the same files):

    model.safetensors                     merged VLM: vision towers, projector, LLM (no tied lm_head),
                                          action_queries.weight (982 tensors at real size)
    action_head--[{step}_]checkpoint.pt   head state dict, keys "model.*" (upstream files may carry "module.")
    proprio_projector--[{step}_]checkpoint.pt
    dataset_statistics.json               un-normalisation statistics
    tokenizer files                       (tokenizer.json, tokenizer_config.json, ...)
    vla_config.json | config.json         our VLAConfig, or the released HF config (real size is derived)

Base VLM for fine-tuning (facts §5.1): a Prismatic run directory with `checkpoints/*.pt` in the native
format (`torch.load(...)["model"]` = {"projector": {projector.{0,2,4}.*}, "llm_backbone": {llm.model.*,
llm.lm_head.weight}, optionally "vision_backbone": {dino_featurizer.*, siglip_featurizer.*}}). The released
base VLM has no vision weights: the towers come from timm's pretrained weights. They are looked up, per
tower, in this order:

    1. <vision_weights_dir>/<timm_model_id>.safetensors    (default dir: <vlm_dir>/vision/)
    2. timm's own pretrained weights (`timm.create_model(<id>.<tag>, pretrained=True)`), which timm fetches
       through the Hugging Face hub cache (e.g. timm/vit_large_patch14_reg4_dinov2.lvd142m,
       timm/vit_so400m_patch14_siglip_224.webli): downloaded once, then read from the cache (HF_HOME);
       with HF_HUB_OFFLINE=1 only the cache is used.

Both loaders also take a Hugging Face hub id instead of a directory (`prismatic.models.hub`): the released
`VLA-Adapter/LIBERO-*` repos, `Stanford-ILIAD/prism-qwen25-extra-dinosiglip-224px-0_5b`.

timm-format files are passed through timm's checkpoint filter (resamples pos_embed to the model's grid).

Loading is strict: every missing / unexpected key, wrong shape, or head-variant mismatch is collected and
reported in ONE `CheckpointError`; missing files are reported together in one FileNotFoundError.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from prismatic.constants import (
    ACTION_HEAD_FILE,
    DATASET_STATISTICS_FILE,
    MERGED_MODEL_FILE,
    PROPRIO_PROJECTOR_FILE,
    RELEASED_ACTION_HEAD_FILE,
    RELEASED_PROPRIO_PROJECTOR_FILE,
    VLA_CONFIG_FILE,
)
from prismatic.models.config import ActionHeadConfig, LLMConfig, VisionConfig, VLAConfig
from prismatic.models.manifest import CorruptCheckpointError, verify_manifest
from prismatic.models.processing import VLAProcessor, load_tokenizer
from prismatic.models.vision import timm_architecture
from prismatic.models.vla import VLAAdapter
from prismatic.vla.normalization import load_dataset_statistics, save_dataset_statistics

logger = logging.getLogger(__name__)

HF_CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
VISION_WEIGHTS_SUBDIR = "vision"
# Pretrained tags of the timm weights the Prismatic base VLM used (timm 0.9.10 defaults), for ids without one.
UPSTREAM_PRETRAINED_TAGS = {"vit_so400m_patch14_siglip_224": "webli"}
# transformers-4.40 Qwen2Config defaults: HF omits fields equal to these when it serialises `text_config`.
QWEN2_HF_DEFAULTS = {
    "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
}
# Not recoverable from the released files (upstream constants for LIBERO / CALVIN, facts §2.8).
RELEASED_NUM_ACTIONS_CHUNK = 8
RELEASED_NUM_IMAGES = 2
RELEASED_HEAD_NUM_HEADS = 8


class CheckpointError(ValueError):
    """A checkpoint does not match the model; the message lists every problem found."""

    def __init__(self, source: str | Path, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"checkpoint {source} does not match the model:\n  - " + "\n  - ".join(problems))


@dataclass
class LoadedVLA:
    model: VLAAdapter  # eval mode
    processor: VLAProcessor
    dataset_statistics: dict[str, dict]
    config: VLAConfig


# ---------------------------------------------------------------- state-dict helpers
def read_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat state dict from .safetensors or a torch .pt (weights_only); strips DDP "module." prefixes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / corrupt (safetensors and torch do not name the file): name it
        raise CorruptCheckpointError(f"corrupt weights file {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(path, ["expected a flat mapping of tensor names to tensors"])
    return {k.removeprefix("module."): v for k, v in state.items()}


def compare_state(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], where: str) -> list[str]:
    """Missing / unexpected keys and shape mismatches between two state dicts, as readable lines."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"{where}: {len(missing)} missing key(s): {_abbrev(missing)}")
    if unexpected:
        problems.append(f"{where}: {len(unexpected)} unexpected key(s): {_abbrev(unexpected)}")
    for key in sorted(set(expected) & set(found)):
        if tuple(expected[key].shape) != tuple(found[key].shape):
            problems.append(
                f"{where}: {key} has shape {tuple(found[key].shape)}, model expects {tuple(expected[key].shape)}"
            )
    return problems


def _abbrev(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def head_variant_of(state: Mapping[str, torch.Tensor]) -> bool | None:
    """True for a Pro head (k_self/k_task), False for the original (k_proj), None if neither is present."""
    if any(k.endswith(".k_self.weight") for k in state):
        return True
    if any(k.endswith(".k_proj.weight") for k in state):
        return False
    return None


def _variant_name(pro: bool) -> str:
    return "a Pro" if pro else "an original"


# ---------------------------------------------------------------- released config.json
def config_from_hf_config(
    hf_config: Mapping[str, Any],
    *,
    use_pro_version: bool,
    num_action_queries: int,
    action_dim: int,
    proprio_dim: int | None,
    num_images_in_input: int = RELEASED_NUM_IMAGES,
    source: str = HF_CONFIG_FILE,
) -> VLAConfig:
    """The VLAConfig of a released checkpoint from its HF `config.json` plus sizes read from the weights.

    Vision widths come from the timm ids (`timm_model_ids`), the LLM from `text_config`; chunk length and head
    count are the upstream constants (they are not stored anywhere in the release).
    """
    problems = []
    for key in ("text_config", "timm_model_ids", "image_sizes"):
        if key not in hf_config:
            problems.append(f"{source} lacks {key!r}")
    if not hf_config.get("use_fused_vision_backbone", False):
        problems.append(f"{source}: use_fused_vision_backbone must be true (DINOv2 + SigLIP)")
    if problems:
        raise CheckpointError(source, problems)
    ids, sizes = hf_config["timm_model_ids"], hf_config["image_sizes"]
    if len(ids) != 2 or len(sizes) != 2 or sizes[0] != sizes[1]:
        raise CheckpointError(source, [f"expected two timm ids and two equal image sizes, got {ids} / {sizes}"])
    image_size = int(sizes[0])
    dino = timm_architecture(ids[0], image_size)
    siglip = timm_architecture(ids[1], image_size)
    if dino[3] != siglip[3]:
        raise CheckpointError(source, [f"towers have different patch sizes {dino[3]} and {siglip[3]}"])
    text = {**QWEN2_HF_DEFAULTS, **hf_config["text_config"]}
    rope_theta = text.get("rope_parameters", {}).get("rope_theta", text["rope_theta"])
    return VLAConfig(
        preset="vla-adapter-pro" if use_pro_version else "vla-adapter",
        vision=VisionConfig(
            dino_model_id=ids[0], siglip_model_id=ids[1], image_size=image_size, patch_size=dino[3],
            dino_embed_dim=dino[0], dino_depth=dino[1], dino_num_heads=dino[2],
            siglip_embed_dim=siglip[0], siglip_depth=siglip[1], siglip_num_heads=siglip[2],
        ),
        llm=LLMConfig(
            hidden_size=text["hidden_size"], num_hidden_layers=text["num_hidden_layers"],
            num_attention_heads=text["num_attention_heads"], num_key_value_heads=text["num_key_value_heads"],
            intermediate_size=text["intermediate_size"], vocab_size=text["vocab_size"],
            rope_theta=float(rope_theta), rms_norm_eps=float(text["rms_norm_eps"]),
            max_position_embeddings=text["max_position_embeddings"],
            tie_word_embeddings=bool(text["tie_word_embeddings"]),
        ),
        # Upstream trained (and evaluates) its heads in bf16: the released Pro weights saw a bf16 RoPE table.
        action_head=ActionHeadConfig(use_pro_version=use_pro_version, num_heads=RELEASED_HEAD_NUM_HEADS,
                                     rope_dtype="bfloat16"),
        num_images_in_input=num_images_in_input,
        num_action_queries=num_action_queries,
        num_actions_chunk=RELEASED_NUM_ACTIONS_CHUNK,
        action_dim=action_dim,
        proprio_dim=proprio_dim if proprio_dim is not None else 8,
        use_proprio=proprio_dim is not None,
        zero_constant_proprio=False,  # upstream's evaluation normalises proprio without zeroing (vla.py quirk 10)
    )


# ---------------------------------------------------------------- save
def replace_directory(tmp: Path, out_dir: Path) -> None:
    """Put the complete directory `tmp` at `out_dir`. An existing `out_dir` is renamed aside first and removed
    only after the new one is in place, so at every moment one complete copy is on disk."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)


def write_checkpoint_files(
    model: VLAAdapter,
    directory: str | Path,
    tokenizer,
    dataset_statistics: dict[str, dict],
    step: int | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write the checkpoint files into an existing directory (not atomic; see `save_released_checkpoint`).

    dtype: cast floating tensors (e.g. torch.bfloat16 like the released files); None keeps the model's.
    """
    directory = Path(directory)

    def export(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in state.items():
            value = value.detach().to("cpu")
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            out[key] = value.contiguous().clone()  # own storage: no views, no tied sharing
        return out

    save_file(export(model.merged_vlm_state_dict()), str(directory / MERGED_MODEL_FILE), metadata={"format": "pt"})
    head_name = RELEASED_ACTION_HEAD_FILE if step is None else ACTION_HEAD_FILE.format(step=step)
    torch.save(export(model.action_head.state_dict()), directory / head_name)
    if model.proprio_projector is not None:
        proprio_name = RELEASED_PROPRIO_PROJECTOR_FILE if step is None else PROPRIO_PROJECTOR_FILE.format(step=step)
        torch.save(export(model.proprio_projector.state_dict()), directory / proprio_name)
    save_dataset_statistics(dataset_statistics, directory / DATASET_STATISTICS_FILE)
    tokenizer.save_pretrained(str(directory))
    model.config.save(directory / VLA_CONFIG_FILE)


def save_released_checkpoint(
    model: VLAAdapter,
    out_dir: str | Path,
    tokenizer,
    dataset_statistics: dict[str, dict],
    step: int | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Save `model` (a plain VLAAdapter: merge LoRA first) in the released format, atomically.

    Files are written to a temporary sibling directory which is then renamed to `out_dir`, so a crash never
    leaves a half-written checkpoint. An existing `out_dir` is an error unless `overwrite`.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"checkpoint directory already exists: {out_dir} (pass overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_checkpoint_files(model, tmp, tokenizer, dataset_statistics, step=step, dtype=dtype)
        replace_directory(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved checkpoint to %s", out_dir)
    return out_dir


# ---------------------------------------------------------------- load (released format)
def _find_one(directory: Path, prefix: str) -> tuple[Path | None, str | None]:
    """The single file `<prefix>--*checkpoint.pt` in `directory` (or an explanation why not)."""
    matches = sorted(p for p in directory.glob(f"{prefix}--*checkpoint.pt") if p.is_file())
    if not matches:
        return None, f"{prefix}--*checkpoint.pt"
    if len(matches) > 1:
        raise CheckpointError(directory, [f"several {prefix} files: {[m.name for m in matches]}; keep exactly one"])
    return matches[0], None


@dataclass
class CheckedCheckpoint:
    """A checkpoint directory whose files were found and checked against the model they describe."""

    directory: Path
    config: VLAConfig
    model: VLAAdapter  # on the meta device (no weights)
    head_path: Path
    proprio_path: Path | None
    states: dict[str, dict[str, torch.Tensor]]  # "vlm" / "head" / "proprio" -> state (meta tensors when lazy)


def read_state_shapes(path: str | Path) -> dict[str, torch.Tensor]:
    """Like `read_state_file`, without reading the weights: meta tensors of the stored shapes and dtypes
    (safetensors header; torch .pt files are memory-mapped and only their metadata is touched)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        out = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                sliced = f.get_slice(key)
                out[key] = torch.empty(sliced.get_shape(), dtype=_SAFETENSORS_DTYPES[sliced.get_dtype()],
                                       device="meta")
        return out
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(path, ["expected a flat mapping of tensor names to tensors"])
    return {k.removeprefix("module."): torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in state.items()}


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def check_vla_checkpoint(
    ckpt_dir: str | Path,
    use_pro_version: bool | None = None,
    num_images_in_input: int | None = None,
    attn_implementation: str | None = None,
    lazy: bool = True,
) -> CheckedCheckpoint:
    """Every check `load_vla_checkpoint` makes (files present, manifest, head variant, strict keys and shapes
    against the model built on the meta device), without loading the model. lazy: read only the tensors'
    shapes (what `--dry_run` uses); False reads the weights (the loader)."""
    from prismatic.models.hub import looks_like_hub_id, resolve_model_dir

    if not Path(ckpt_dir).exists() and looks_like_hub_id(str(ckpt_dir)):
        ckpt_dir = resolve_model_dir(ckpt_dir, flag="checkpoint")
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {ckpt_dir}")
    verify_manifest(ckpt_dir)  # ours: every file against its sha256; released (no manifest): nothing to check
    missing = []
    head_path, why = _find_one(ckpt_dir, "action_head")
    missing += [why] if why else []
    proprio_path, proprio_why = _find_one(ckpt_dir, "proprio_projector")
    our_config = ckpt_dir / VLA_CONFIG_FILE
    config = VLAConfig.load(our_config) if our_config.is_file() else None
    if proprio_why and (config is None or config.use_proprio):
        missing.append(proprio_why)
    for name in (MERGED_MODEL_FILE, DATASET_STATISTICS_FILE):
        if not (ckpt_dir / name).is_file():
            missing.append(name)
    if config is None and not (ckpt_dir / HF_CONFIG_FILE).is_file():
        missing.append(f"{VLA_CONFIG_FILE} or {HF_CONFIG_FILE}")
    if not any((ckpt_dir / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer files ({' / '.join(TOKENIZER_FILES)})")
    if missing:
        raise FileNotFoundError(f"checkpoint {ckpt_dir} lacks: {', '.join(missing)}")

    read = read_state_shapes if lazy else read_state_file
    head_state = read(head_path)
    proprio_state = read(proprio_path) if proprio_path is not None else None
    vlm_state = read(ckpt_dir / MERGED_MODEL_FILE)

    problems = []
    file_pro = head_variant_of(head_state)
    if file_pro is None:
        raise CheckpointError(head_path, ["no attention projections (k_proj / k_self) found: not an action head"])
    if use_pro_version is not None and use_pro_version != file_pro:
        problems.append(
            f"head variant mismatch: use_pro_version={use_pro_version} requested but {head_path.name} holds "
            f"{_variant_name(file_pro)} head"
        )
    if config is None:
        queries = vlm_state.get("action_queries.weight")
        fc2 = head_state.get("model.fc2.weight")
        if queries is None or fc2 is None:
            raise CheckpointError(ckpt_dir, ["action_queries.weight / model.fc2.weight needed to size the model"])
        config = config_from_hf_config(
            json.loads((ckpt_dir / HF_CONFIG_FILE).read_text()),
            use_pro_version=file_pro,
            num_action_queries=queries.shape[0],
            action_dim=fc2.shape[0],
            proprio_dim=None if proprio_state is None else proprio_state["fc1.weight"].shape[1],
            source=str(ckpt_dir / HF_CONFIG_FILE),
        )
    elif config.action_head.use_pro_version != file_pro:
        problems.append(
            f"head variant mismatch: {VLA_CONFIG_FILE} says use_pro_version={config.action_head.use_pro_version} "
            f"but {head_path.name} holds {_variant_name(file_pro)} head"
        )
    if problems:
        raise CheckpointError(ckpt_dir, problems)
    if num_images_in_input is not None:
        config = dataclasses.replace(config, num_images_in_input=num_images_in_input)

    with torch.device("meta"):
        model = VLAAdapter(config, attn_implementation=attn_implementation)
    problems += compare_state(model.merged_vlm_state_dict(), vlm_state, MERGED_MODEL_FILE)
    problems += compare_state(model.action_head.state_dict(), head_state, head_path.name)
    if model.proprio_projector is not None:
        problems += compare_state(model.proprio_projector.state_dict(), proprio_state, proprio_path.name)
    if problems:
        raise CheckpointError(ckpt_dir, problems)

    return CheckedCheckpoint(ckpt_dir, config, model, head_path, proprio_path,
                             {"vlm": vlm_state, "head": head_state, "proprio": proprio_state})


def load_vla_checkpoint(
    ckpt_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    use_pro_version: bool | None = None,
    num_images_in_input: int | None = None,
    attn_implementation: str | None = None,
) -> LoadedVLA:
    """Load a released VLA-Adapter checkpoint or one of ours (same files) for inference.

    ckpt_dir: a directory, or a hub id (e.g. VLA-Adapter/LIBERO-Spatial-Pro, resolved by `hub.resolve_model_dir`).
    use_pro_version: None accepts the head variant found in the file; True / False demands it (error if
    the file holds the other variant). num_images_in_input overrides the config's (released: 2).
    """
    checked = check_vla_checkpoint(ckpt_dir, use_pro_version, num_images_in_input, attn_implementation, lazy=False)
    ckpt_dir, config, model = checked.directory, checked.config, checked.model
    vlm_state, head_state, proprio_state = (checked.states[k] for k in ("vlm", "head", "proprio"))
    file_pro = config.action_head.use_pro_version
    full = dict(vlm_state)
    full.update({f"action_head.{k}": v for k, v in head_state.items()})
    if proprio_state is not None and model.proprio_projector is not None:
        full.update({f"proprio_projector.{k}": v for k, v in proprio_state.items()})
    model.load_state_dict(full, strict=False, assign=True)  # strictness was checked above
    device = torch.device(device)
    model.materialize_meta_buffers(torch.device("cpu"))
    model = model.to(device=device, dtype=dtype).eval()

    tokenizer = load_tokenizer(ckpt_dir)
    processor = VLAProcessor(
        tokenizer=tokenizer,
        image_size=config.vision.image_size,
        num_images=config.num_images_in_input,
        num_action_queries=config.num_action_queries,
    )
    logger.info("loaded VLA with %s head from %s", _variant_name(file_pro), ckpt_dir)
    return LoadedVLA(model, processor, load_dataset_statistics(ckpt_dir), config)


# ---------------------------------------------------------------- load (base VLM, native Prismatic format)
def find_prismatic_checkpoint(vlm_dir: Path) -> Path:
    """The `.pt` in `<vlm_dir>/checkpoints/` with the highest step (names `step-XXXXXX-epoch-...`)."""
    found = sorted((vlm_dir / "checkpoints").glob("*.pt"))
    if not found:
        raise FileNotFoundError(f"no Prismatic checkpoint: {vlm_dir / 'checkpoints'}/*.pt does not exist")

    def step_of(path: Path) -> int:
        match = re.match(r"step-(\d+)", path.name)
        if match is None:
            raise CheckpointError(vlm_dir, [f"cannot read the step of {path.name} (expected step-<N>-...)"])
        return int(match.group(1))

    return max(found, key=step_of) if len(found) > 1 else found[0]


def _vision_key(key: str) -> str:
    # timm LayerScale.gamma -> scale_factor (our / the released key name).
    return key[: -len(".gamma")] + ".scale_factor" if key.endswith(".gamma") else key


def _tagged_timm_id(model_id: str) -> str:
    """`id.tag` of a tower: ids without a tag get the one the Prismatic base VLM used (timm 0.9.10 defaults)."""
    if "." in model_id:
        return model_id
    tag = UPSTREAM_PRETRAINED_TAGS.get(model_id)
    return f"{model_id}.{tag}" if tag else model_id


def _load_timm_file(tower: torch.nn.Module, path: Path, prefix: str) -> dict[str, torch.Tensor]:
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = checkpoint_filter_fn(load_file(str(path)), tower)  # resamples pos_embed to the model's grid
    return {f"{prefix}.{_vision_key(k)}": v for k, v in state.items()}


def _tower_weights(config: VLAConfig, attr: str, model_id: str, tower: torch.nn.Module, vision_dir: Path,
                   hf_cache_dir: str | Path | None) -> tuple[dict[str, torch.Tensor] | None, str]:
    """One tower's weights (our key names, prefixed) from `<vision_dir>/<id>.safetensors`, else from timm's
    pretrained weights (through the HF hub cache). Returns (state, "") or (None, what was tried and why not)."""
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    from prismatic.models.vision import pretrained_tower_state

    prefix = f"vision_backbone.{attr}"
    local = vision_dir / f"{model_id}.safetensors"
    if local.is_file():
        return _load_timm_file(tower, local, prefix), ""
    tagged = _tagged_timm_id(model_id)
    v = config.vision
    dims = ((v.dino_embed_dim, v.dino_depth, v.dino_num_heads) if attr == "featurizer"
            else (v.siglip_embed_dim, v.siglip_depth, v.siglip_num_heads))
    try:
        state = pretrained_tower_state(tagged, v.image_size, *dims,
                                       cache_dir=None if hf_cache_dir is None else str(hf_cache_dir))
    except (LocalEntryNotFoundError, EntryNotFoundError, HfHubHTTPError) as e:
        repo = getattr(timm_pretrained_cfg(tagged), "hf_hub_id", None) or tagged
        return None, (f"{model_id}: not at {local}, and timm's pretrained weights {tagged} (hub repo {repo}) could "
                      f"not be fetched: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return {f"{prefix}.{k}": t for k, t in state.items()}, ""


def timm_pretrained_cfg(tagged_model_id: str):
    """timm's pretrained config for `id.tag` (None if timm has none)."""
    import timm

    return timm.models.get_pretrained_cfg(tagged_model_id)


def load_base_vlm(
    vlm_dir: str | Path,
    config: VLAConfig,
    vision_weights_dir: str | Path | None = None,
    hf_cache_dir: str | Path | None = None,
    attn_implementation: str | None = None,
) -> VLAAdapter:
    """A VLAAdapter whose VLM (vision towers, projector, LLM) comes from a Prismatic base-VLM directory;
    action queries, head and proprio projector stay randomly initialised (they are trained from scratch).

    vlm_dir: the Prismatic run directory (with `checkpoints/*.pt`; the highest step is used), a `.pt`, or a
    hub id (e.g. Stanford-ILIAD/prism-qwen25-extra-dinosiglip-224px-0_5b, resolved by `hub.resolve_model_dir`).
    vision_weights_dir: where `<timm_model_id>.safetensors` of each tower live (default `<vlm_dir>/vision`),
    used only when the checkpoint has no "vision_backbone" entry; towers not there come from timm's pretrained
    weights (fetched through the HF hub cache; hf_cache_dir overrides the cache location).
    """
    from prismatic.models.hub import looks_like_hub_id, resolve_model_dir

    if not Path(vlm_dir).exists() and looks_like_hub_id(str(vlm_dir)):
        vlm_dir = resolve_model_dir(vlm_dir, flag="base VLM", kind="base_vlm")
    vlm_path = Path(vlm_dir)
    if vlm_path.is_file():
        ckpt_path, vlm_dir = vlm_path, vlm_path.parent.parent
    elif vlm_path.is_dir():
        ckpt_path, vlm_dir = find_prismatic_checkpoint(vlm_path), vlm_path
    else:
        raise FileNotFoundError(f"base VLM not found: {vlm_path}")
    logger.info("loading base VLM weights from %s", ckpt_path)
    raw = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    native = raw.get("model") if isinstance(raw, Mapping) else None
    if not isinstance(native, Mapping) or not {"projector", "llm_backbone"} <= set(native):
        raise CheckpointError(ckpt_path, ['expected torch.load(...)["model"] with "projector" and "llm_backbone"'])

    model = VLAAdapter(config, attn_implementation=attn_implementation)
    state: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    renames = {"projector.0.": "projector.fc1.", "projector.2.": "projector.fc2.", "projector.4.": "projector.fc3."}
    for key, value in native["projector"].items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        if prefix is None:
            problems.append(f'unexpected key {key!r} in the "projector" entry')
            continue
        state[renames[prefix] + key[len(prefix):]] = value
    llm = {}
    for key, value in native["llm_backbone"].items():
        if not key.startswith("llm."):
            problems.append(f'unexpected key {key!r} in the "llm_backbone" entry')
            continue
        llm["language_model." + key.removeprefix("llm.")] = value
    if config.llm.tie_word_embeddings and "language_model.lm_head.weight" in llm:
        lm_head = llm.pop("language_model.lm_head.weight")
        embed = llm.get("language_model.model.embed_tokens.weight")
        if embed is not None and (embed.shape != lm_head.shape or not torch.equal(embed, lm_head)):
            problems.append("llm.lm_head.weight differs from llm.model.embed_tokens.weight but the config ties them")
    state.update(llm)

    if "vision_backbone" in native:
        towers = {"dino_featurizer.": "vision_backbone.featurizer.", "siglip_featurizer.": "vision_backbone.fused_featurizer."}
        for key, value in native["vision_backbone"].items():
            prefix = next((p for p in towers if key.startswith(p)), None)
            if prefix is None:
                problems.append(f'unexpected key {key!r} in the "vision_backbone" entry')
                continue
            state[_vision_key(towers[prefix] + key[len(prefix):])] = value
    else:
        vision_dir = Path(vision_weights_dir) if vision_weights_dir is not None else vlm_dir / VISION_WEIGHTS_SUBDIR
        not_found = []
        for attr, model_id in (("featurizer", config.vision.dino_model_id),
                               ("fused_featurizer", config.vision.siglip_model_id)):
            tower_state, why = _tower_weights(config, attr, model_id, getattr(model.vision_backbone, attr),
                                              vision_dir, hf_cache_dir)
            if tower_state is None:
                not_found.append(why)
                continue
            state.update(tower_state)
        if not_found:
            raise FileNotFoundError(
                f"{ckpt_path} has no vision weights and the timm pretrained weights are not available: "
                + " | ".join(not_found)
                + f". Fetch them once with network access (they are cached under HF_HOME), or put "
                f"<timm_model_id>.safetensors files in {vision_dir} (or pass vision_weights_dir)."
            )

    expected = {k: v for k, v in model.merged_vlm_state_dict().items() if not k.startswith("action_queries")}
    problems += compare_state(expected, state, str(ckpt_path.name))
    if problems:
        raise CheckpointError(ckpt_path, problems)
    # Strictness was checked above against exactly the VLM keys; queries / head / proprio stay random.
    model.load_state_dict(state, strict=False)
    return model
