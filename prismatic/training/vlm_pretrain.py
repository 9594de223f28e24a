"""Pretraining the tiny / mid preset's VLM (vision towers, projector, LLM; no action head) on generated
image-text data, and writing it as a native Prismatic base-VLM directory.

The data are the captions and closed-set questions of `prismatic.vla.datasets.vqa` (scenes drawn by the
synthetic LIBERO renderer). The loss is next-token cross-entropy on the target tokens only (the answer or
caption and its <|im_end|>), averaged per example, through the VLA's own modules and sequence layout
(`prismatic.models.vlm_lm`). The result is written with `prismatic.models.native_vlm.write_native_base_vlm`
in the layout of the released base VLM, so `finetune.py --vlm_path <out_dir>` loads it through
`prismatic.models.loading.load_base_vlm` exactly as it loads the real one.

Evaluation (end of pretraining, also used by the retention probe):
    VQA accuracy   closed set: the answer in ANSWERS[question_type] whose completion has the highest summed
                   log-likelihood under the LM head (no decoding); chance = mean over samples of 1 / |answers|
    caption NLL    mean per-token negative log-likelihood of the caption completion, one per scene
"""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prismatic.models.config import VLAConfig, get_preset
from prismatic.models.loading import find_prismatic_checkpoint
from prismatic.models.native_vlm import write_native_base_vlm
from prismatic.models.processing import build_tiny_tokenizer
from prismatic.models.vla import VLAAdapter
from prismatic.models.vlm_lm import (
    TextBatch,
    collate_pairs,
    encode_pair,
    image_patch_embeddings,
    mean_target_nll,
    single_image_pixels,
    target_log_probs,
)
from prismatic.vla.datasets.vqa import (
    ANSWERS,
    VQASample,
    caption_prompt,
    ensure_vqa_dataset,
    load_vqa_split,
    prompt_for,
    target_text,
)

logger = logging.getLogger(__name__)

PRETRAIN_METRICS_FILE = "pretrain_metrics.json"
PRETRAIN_CONFIG_FILE = "pretrain_config.json"
PRESETS = ("tiny", "mid")
README = """PRETRAINED TINY VLM (preset {preset}) written by vla-scripts/pretrain_tiny_vlm.py.
Vision towers, projector and LLM trained from scratch for {steps} steps on generated image-text data
(captions + closed-set VQA about synthetic table scenes, {data}). Native Prismatic base-VLM layout: use it as
`vla-scripts/finetune.py --model_preset {preset} --vlm_path <this dir>`. Held-out VQA accuracy {accuracy:.3f}
(chance {chance:.3f}); see pretrain_metrics.json. Not a real VLM: it knows only these scenes.
"""


@dataclass
class PretrainConfig:
    # Where the base-VLM directory is written (replaced atomically at the end).
    out_dir: str = "runs/tiny_vlm"
    # The VQA dataset directory (created / regenerated if missing or different); None = <out_dir>_vqa_data.
    data_root: str | None = None
    # Model preset whose VLM is pretrained ("tiny" or "mid"); its vision.image_size sets the image size.
    model_preset: str = "tiny"
    # Scenes in the generated training / held-out splits (each scene: 1 caption + 6 questions).
    num_train_scenes: int = 6000
    num_heldout_scenes: int = 300
    # Seed of the generated dataset.
    data_seed: int = 0
    # Optimizer steps and examples per step.
    max_steps: int = 8000
    batch_size: int = 32
    # Every caption_every-th step trains on a batch of captions, the others on questions (a scene has 1 caption
    # and 6 questions; captions are ~4x longer, so mixing them into question batches would pad every question
    # row to caption length). 0 = questions only.
    caption_every: int = 7
    # AdamW peak learning rate, linear warmup steps, then cosine decay to min_lr_ratio * peak. (3e-3 stayed on
    # the text priors here: held-out colour / count at chance after 600 steps; 1e-3 learns count by ~1500.)
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    # Gradient-norm clip (0 disables it).
    max_grad_norm: float = 1.0
    # Seed of the initial weights and of the example order.
    seed: int = 0
    # Std of the normal re-initialisation of the LLM's weight matrices (embeddings, attention, MLP) before
    # pretraining; 0 keeps the preset's Qwen2 init (std 0.02, meant for width 896). At the tiny width (64) that
    # init makes the image -> answer pathway learn several times slower (32 scenes' "leftmost colour" memorised
    # in 150 steps with 0.08, not in 300 with 0.02).
    llm_init_std: float = 0.08
    # A plain progress line every log_freq steps (a tqdm bar instead when stderr is a terminal).
    log_freq: int = 50
    # Rows per forward in the evaluations.
    eval_batch_size: int = 128
    # Every eval_freq steps, log the VQA accuracy on the first eval_scenes held-out scenes (0 = only at the end).
    eval_freq: int = 0
    eval_scenes: int = 50
    # Training scenes also scored at the end (train accuracy, to read the generalisation gap); 0 skips it.
    num_train_eval_scenes: int = 300
    # torch CPU threads (0 = leave torch's default).
    num_threads: int = 0
    # Replace an existing out_dir (otherwise an existing out_dir is an error).
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.model_preset not in PRESETS:
            raise ValueError(f"--model_preset must be one of {PRESETS}, got {self.model_preset!r}")
        for name in ("num_train_scenes", "num_heldout_scenes", "max_steps", "batch_size", "log_freq",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "num_train_eval_scenes", "num_threads", "eval_freq", "eval_scenes",
                     "caption_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"--min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.llm_init_std < 0:
            raise ValueError(f"--llm_init_std must be >= 0, got {self.llm_init_std}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError(f"--weight_decay and --max_grad_norm must be >= 0, got "
                             f"{self.weight_decay}, {self.max_grad_norm}")
        if self.num_train_eval_scenes > self.num_train_scenes:
            raise ValueError(f"--num_train_eval_scenes ({self.num_train_eval_scenes}) must be <= --num_train_scenes "
                             f"({self.num_train_scenes})")

    @property
    def resolved_data_root(self) -> Path:
        return Path(self.data_root) if self.data_root else Path(self.out_dir).with_name(
            Path(self.out_dir).name + "_vqa_data")

    def identity(self) -> dict[str, Any]:
        """The fields that determine the trained weights (what a reusable directory must match)."""
        skip = {"out_dir", "data_root", "log_freq", "eval_batch_size", "num_train_eval_scenes", "num_threads",
                "overwrite", "eval_freq", "eval_scenes"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


# ---------------------------------------------------------------------------------------------------------
# Evaluation (shared with the retention probe)
# ---------------------------------------------------------------------------------------------------------
def _device_of(model) -> torch.device:
    return model.projector.fc1.weight.device


def _scene_patches(model, samples: list[VQASample], image_size: int) -> tuple[dict[int, int], torch.Tensor]:
    """Projected patches of every distinct image in `samples` (by scene_id): index map and (N, p, D)."""
    index, images = {}, []
    for s in samples:
        if s.scene_id not in index:
            index[s.scene_id] = len(images)
            images.append(s.image)
    device = _device_of(model)
    chunks = [image_patch_embeddings(model, single_image_pixels(images[i: i + 64], image_size).to(device))
              for i in range(0, len(images), 64)]
    return index, torch.cat(chunks)


def _summed_log_likelihoods(model, tokenizer, patches: torch.Tensor, rows: list[tuple[int, str, str]],
                            batch_size: int) -> torch.Tensor:
    """Summed target log-likelihood of each (patch row, prompt, target) in `rows`, batched."""
    device, pad = patches.device, int(tokenizer.pad_token_id)
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start: start + batch_size]
        batch = collate_pairs([encode_pair(tokenizer, prompt, target) for _, prompt, target in chunk], pad)
        batch = TextBatch(batch.input_ids.to(device), batch.attention_mask.to(device), batch.target_mask.to(device))
        rows_patches = patches[torch.tensor([r for r, _, _ in chunk], device=device)]
        lp = target_log_probs(model, rows_patches, batch)
        out.append(torch.stack([lp.sum(dim=1), batch.target_mask.sum(dim=1).float()], dim=1))
    return torch.cat(out)


@torch.no_grad()
def evaluate_vqa(model, tokenizer, samples: list[VQASample], image_size: int, batch_size: int = 128
                 ) -> dict[str, Any]:
    """Closed-set VQA accuracy (argmax summed log-likelihood over ANSWERS[type]) and caption NLL of `samples`.

    Returns {"vqa_accuracy", "chance_accuracy", "vqa_accuracy_by_type": {type: acc},
    "seen_question_accuracy" (samples without heldout_question: the training question forms; None if none),
    "heldout_question_accuracy" (samples with heldout_question; None if there are none),
    "caption_nll" (mean per-token NLL, one caption per scene), "num_samples", "num_scenes"}.
    The model is put in eval mode and restored to its previous mode."""
    if not samples:
        raise ValueError("evaluate_vqa needs at least one sample")
    was_training = model.training
    model.eval()
    try:
        index, patches = _scene_patches(model, samples, image_size)
        rows, owners, candidates = [], [], []
        for i, s in enumerate(samples):
            if s.question_type not in ANSWERS:
                raise ValueError(f"sample {i}: unknown question_type {s.question_type!r}")
            for candidate in ANSWERS[s.question_type]:
                rows.append((index[s.scene_id], prompt_for(s), target_text(candidate)))
                owners.append(i)
                candidates.append(candidate)
        scores = _summed_log_likelihoods(model, tokenizer, patches, rows, batch_size)[:, 0].cpu()
        best: dict[int, tuple[float, str]] = {}
        for owner, score, candidate in zip(owners, scores.tolist(), candidates):
            if owner not in best or score > best[owner][0]:  # ties: the first candidate in ANSWERS order
                best[owner] = (score, candidate)
        correct = [best[i][1] == s.answer for i, s in enumerate(samples)]
        by_type = defaultdict(list)
        for ok, s in zip(correct, samples):
            by_type[s.question_type].append(ok)
        heldout_q = [ok for ok, s in zip(correct, samples) if s.heldout_question]
        seen_q = [ok for ok, s in zip(correct, samples) if not s.heldout_question]
        first_of_scene = {}
        for s in samples:
            first_of_scene.setdefault(s.scene_id, s)
        cap_rows = [(index[sid], caption_prompt(), target_text(s.caption)) for sid, s in first_of_scene.items()]
        cap = _summed_log_likelihoods(model, tokenizer, patches, cap_rows, batch_size).cpu()
        caption_nll = float((-cap[:, 0] / cap[:, 1]).mean())
    finally:
        model.train(was_training)
    return {
        "vqa_accuracy": float(np.mean(correct)),
        "chance_accuracy": float(np.mean([1.0 / len(ANSWERS[s.question_type]) for s in samples])),
        "vqa_accuracy_by_type": {t: float(np.mean(v)) for t, v in sorted(by_type.items())},
        "seen_question_accuracy": float(np.mean(seen_q)) if seen_q else None,
        "heldout_question_accuracy": float(np.mean(heldout_q)) if heldout_q else None,
        "caption_nll": caption_nll,
        "num_samples": len(samples),
        "num_scenes": len(first_of_scene),
    }


def majority_accuracy(train: list[VQASample], test: list[VQASample]) -> float:
    """Accuracy of answering each question type with its most frequent training answer (a text-only baseline)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for s in train:
        counts[s.question_type][s.answer] += 1
    return float(np.mean([counts[s.question_type].most_common(1)[0][0] == s.answer if counts[s.question_type]
                          else False for s in test]))


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------
def _examples(samples: list[VQASample]) -> tuple[list[tuple[int, str, str]], list[tuple[int, str, str]]]:
    """(scene_id, prompt, target) training examples: every question, and one caption per scene."""
    questions = [(s.scene_id, prompt_for(s), target_text(s.answer)) for s in samples]
    captions, seen = [], set()
    for s in samples:
        if s.scene_id not in seen:
            seen.add(s.scene_id)
            captions.append((s.scene_id, caption_prompt(), target_text(s.caption)))
    return questions, captions


class _Epochs:
    """Indices into a pool in seeded random order, reshuffled each time the pool is used up."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, self.rng = size, rng
        self.order, self.cursor = rng.permutation(size), 0

    def take(self, count: int) -> np.ndarray:
        if self.cursor + count > self.size:
            self.order, self.cursor = self.rng.permutation(self.size), 0
        picked = self.order[self.cursor: self.cursor + count]
        self.cursor += count
        return picked


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warmup over warmup_steps, then cosine from the peak to min_lr_ratio * peak at max_steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    floor = cfg.min_lr_ratio * cfg.learning_rate
    return floor + (cfg.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def vlm_parameters(model: VLAAdapter) -> list[torch.nn.Parameter]:
    """The VLM's parameters (vision towers, projector, LLM); queries, head and proprio projector excluded."""
    return [p for part in (model.vision_backbone, model.projector, model.language_model) for p in part.parameters()]


class _Progress:
    """A tqdm bar when stderr is a terminal, else a plain log line every `log_freq` steps (as train.py)."""

    def __init__(self, total: int, log_freq: int) -> None:
        self.total, self.log_freq, self.t0 = total, log_freq, time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="pretrain", dynamic_ncols=True, leave=False)

    def update(self, done: int, loss: float, lr: float) -> None:
        text = f"Loss: {loss:.4f} | LR: {lr:.2e}"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif done % self.log_freq == 0 or done == self.total:
            elapsed = time.monotonic() - self.t0
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            eta_text = f"{int(eta) // 60}m{int(eta) % 60:02d}s" if math.isfinite(eta) else "?"
            logger.info("step %d/%d: %s | %.0f%% | %.2f steps/s | ETA %s", done, self.total, text,
                        100 * done / self.total, rate, eta_text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_vlm(cfg: PretrainConfig, model: VLAAdapter, tokenizer, train_samples: list[VQASample],
              image_size: int, on_step: Callable[[int], None] | None = None) -> list[float]:
    """Run cfg.max_steps optimizer steps on `model`'s VLM in place; returns the per-step losses.

    on_step(done) is called after every step (e.g. a periodic evaluation; it may switch to eval mode: the
    next step switches back)."""
    params = vlm_parameters(model)
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    pools = _examples(train_samples)
    if cfg.batch_size > min(len(pools[0]), len(pools[1]) if cfg.caption_every else len(pools[0])):
        raise ValueError(f"--batch_size {cfg.batch_size} is larger than the training set ({len(pools[1])} scenes)")
    encoded = [[encode_pair(tokenizer, prompt, target) for _, prompt, target in pool] for pool in pools]
    images = {s.scene_id: s.image for s in train_samples}
    pad, device = int(tokenizer.pad_token_id), _device_of(model)
    rng = np.random.default_rng(cfg.seed)
    streams = [_Epochs(len(pool), rng) for pool in pools]
    losses: list[float] = []
    progress = _Progress(cfg.max_steps, cfg.log_freq)
    model.train()
    try:
        for step in range(cfg.max_steps):
            kind = 1 if cfg.caption_every and step % cfg.caption_every == cfg.caption_every - 1 else 0
            picked = streams[kind].take(cfg.batch_size)
            batch = collate_pairs([encoded[kind][i] for i in picked], pad)
            batch = TextBatch(batch.input_ids.to(device), batch.attention_mask.to(device),
                              batch.target_mask.to(device))
            pixels = single_image_pixels([images[pools[kind][i][0]] for i in picked], image_size).to(device)
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = mean_target_nll(model, image_patch_embeddings(model, pixels), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"pretraining loss is {value} at step {step + 1}; lower --learning_rate")
            losses.append(value)
            progress.update(step + 1, value, lr)
            if on_step is not None:
                on_step(step + 1)
                model.train()
    finally:
        progress.close()
    model.eval()
    return losses


def build_model_and_tokenizer(preset: str, seed: int, llm_init_std: float = 0.0) -> tuple[VLAAdapter, Any, VLAConfig]:
    """The preset's randomly initialised VLAAdapter (seeded) and its generated tokenizer (the one finetune.py
    builds for random-initialised tiny / mid runs). llm_init_std > 0 redraws every 2-D LLM weight (the tied
    embedding / LM head included) from N(0, llm_init_std^2); norms keep their init."""
    config = get_preset(preset)
    torch.manual_seed(seed)
    model = VLAAdapter(config, attn_implementation="sdpa")
    if llm_init_std > 0:
        with torch.no_grad():
            for p in model.language_model.parameters():  # tied weights are yielded once
                if p.ndim == 2:
                    p.normal_(0.0, llm_init_std)
    with tempfile.TemporaryDirectory() as d:
        tokenizer = build_tiny_tokenizer(d, vocab_size=config.llm.vocab_size)
    return model, tokenizer, config


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Generate / reuse the data, pretrain, evaluate, write the base-VLM directory. Returns the metrics."""
    out_dir = Path(cfg.out_dir)
    if out_dir.exists() and not cfg.overwrite:
        raise FileExistsError(f"--out_dir {out_dir} exists; pass --overwrite True to replace it")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model, tokenizer, config = build_model_and_tokenizer(cfg.model_preset, cfg.seed, cfg.llm_init_std)
    image_size = config.vision.image_size
    data_root = ensure_vqa_dataset(cfg.resolved_data_root, image_size=image_size,
                                   num_train_scenes=cfg.num_train_scenes, num_heldout_scenes=cfg.num_heldout_scenes,
                                   seed=cfg.data_seed)
    train_samples, heldout = load_vqa_split(data_root, "train"), load_vqa_split(data_root, "heldout")
    logger.info("pretraining the %s VLM on %d train samples (%d scenes) for %d steps of %d", cfg.model_preset,
                len(train_samples), cfg.num_train_scenes, cfg.max_steps, cfg.batch_size)
    eval_seconds = 0.0
    periodic = [s for s in heldout if s.scene_id < cfg.eval_scenes]

    def on_step(done: int) -> None:
        nonlocal eval_seconds
        if cfg.eval_freq and done % cfg.eval_freq == 0 and done < cfg.max_steps:
            start = time.monotonic()
            result = evaluate_vqa(model, tokenizer, periodic, image_size, cfg.eval_batch_size)
            eval_seconds += time.monotonic() - start
            logger.info("step %d: held-out VQA accuracy %.3f on %d scenes (chance %.3f); %s", done,
                        result["vqa_accuracy"], result["num_scenes"], result["chance_accuracy"],
                        {k: round(v, 2) for k, v in result["vqa_accuracy_by_type"].items()})

    t0 = time.monotonic()
    losses = train_vlm(cfg, model, tokenizer, train_samples, image_size, on_step)
    train_seconds = time.monotonic() - t0 - eval_seconds
    t1 = time.monotonic()
    held = evaluate_vqa(model, tokenizer, heldout, image_size, cfg.eval_batch_size)
    train_eval = None
    if cfg.num_train_eval_scenes:
        subset = [s for s in train_samples if s.scene_id < cfg.num_train_eval_scenes]
        train_eval = evaluate_vqa(model, tokenizer, subset, image_size, cfg.eval_batch_size)
    metrics = {
        "model_preset": cfg.model_preset,
        "steps": cfg.max_steps,
        "train_seconds": train_seconds,
        "eval_seconds": time.monotonic() - t1 + eval_seconds,
        "torch_threads": torch.get_num_threads(),
        "first_loss": float(np.mean(losses[: min(20, len(losses))])),
        "final_loss": float(np.mean(losses[-min(20, len(losses)):])),
        "vqa_scoring": "closed set: argmax summed log-likelihood of target_text(answer) over ANSWERS[type]",
        "heldout": held,
        "heldout_majority_accuracy": majority_accuracy(train_samples, heldout),
        "train": train_eval,
        "data_root": str(data_root),
    }
    logger.info("held-out VQA accuracy %.3f (chance %.3f, majority answer %.3f; seen question forms %.3f, "
                "held-out combinations %.3f), caption NLL %.3f; per type %s", held["vqa_accuracy"],
                held["chance_accuracy"], metrics["heldout_majority_accuracy"], held["seen_question_accuracy"],
                held["heldout_question_accuracy"], held["caption_nll"],
                {k: round(v, 3) for k, v in held["vqa_accuracy_by_type"].items()})
    extra = {
        PRETRAIN_METRICS_FILE: json.dumps(metrics, indent=2, sort_keys=True),
        PRETRAIN_CONFIG_FILE: json.dumps(asdict(cfg), indent=2, sort_keys=True),
        "README.txt": README.format(preset=cfg.model_preset, steps=cfg.max_steps, data=data_root,
                                    accuracy=held["vqa_accuracy"], chance=held["chance_accuracy"]),
    }
    write_native_base_vlm(out_dir, model, tokenizer, dtype=torch.float32, extra_files=extra)
    logger.info("wrote the pretrained %s base VLM to %s", cfg.model_preset, out_dir)
    return metrics


def is_complete(out_dir: str | Path, cfg: PretrainConfig) -> bool:
    """Whether `out_dir` is a finished pretraining of `cfg` (same identity fields, checkpoint + metrics there)."""
    out_dir = Path(out_dir)
    config_file, metrics_file = out_dir / PRETRAIN_CONFIG_FILE, out_dir / PRETRAIN_METRICS_FILE
    if not (config_file.is_file() and metrics_file.is_file()):
        return False
    try:
        find_prismatic_checkpoint(out_dir)
        saved = PretrainConfig(**json.loads(config_file.read_text()))
    except (FileNotFoundError, ValueError, TypeError, json.JSONDecodeError):
        return False
    return saved.identity() == cfg.identity()


def ensure_pretrained_tiny_vlm(out_dir: str | Path = "runs/tiny_vlm", preset: str = "tiny", **overrides) -> Path:
    """Return `out_dir` if it holds a finished pretraining with these settings, else pretrain into it.

    `overrides` are PretrainConfig fields (max_steps, num_train_scenes, data_root, ...). A directory written
    with other settings is replaced."""
    cfg = PretrainConfig(out_dir=str(out_dir), model_preset=preset, **{**overrides, "overwrite": True})
    if is_complete(out_dir, cfg):
        logger.info("reusing the pretrained %s VLM in %s", preset, out_dir)
        return Path(out_dir)
    pretrain(cfg)
    return Path(out_dir)


def read_pretrain_metrics(out_dir: str | Path) -> dict[str, Any]:
    """The metrics a pretraining wrote into its directory."""
    path = Path(out_dir) / PRETRAIN_METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {out_dir} is not a directory written by pretrain_tiny_vlm")
    return json.loads(path.read_text())
