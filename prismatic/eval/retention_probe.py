"""The retention probe: how much of the pretrained VLM's multimodal competence a model still has.

CRaFT constrains L_ret, the drift of the bridge features Φ = [C_R ‖ C_AQ] from θ0. The probe measures
retention by other means, none of which is L_ret, on a held-out VQA / caption set
(`prismatic.vla.datasets.vqa` layout; docs/RETENTION_PROBE.md):

    Probe/VQA Accuracy            closed-set VQA through the LLM's own LM head: for each held-out question, the
                                  answer in ANSWERS[question_type] whose completion `target_text(answer)` has the
                                  highest summed log-likelihood after the image and `prompt_for(sample)`
    Probe/Caption NLL             negative log-likelihood per caption token (`target_text(caption)` after the image
                                  and `caption_prompt()`), nats, averaged per caption over the held-out scenes
    Probe/Linear Probe Accuracy   ridge linear probes on FROZEN pooled [C_R ‖ C_AQ] features, one per scene
                                  attribute (ATTRIBUTE_CLASSES), fitted on the train scenes, scored on the held-out
                                  scenes; the mean accuracy over the attributes
    Probe/CKA to θ0               linear CKA between the held-out scenes' pooled [C_R ‖ C_AQ] features at θ0 (the
                                  start of fine-tuning) and now

The language-model numbers are the VLM pretraining's own evaluation (`prismatic.training.vlm_pretrain.
evaluate_vqa` over `prismatic.models.vlm_lm`): the first prompt token, the projected patches of the ONE scene
image, the rest of the prompt and the completion (the VLA's layout with one image and no action queries); only
the positions that predict completion tokens go through `language_model.lm_head`. So a probe of the freshly
pretrained base VLM reproduces the accuracy its pretraining reported.

The feature path is the VLA's: `VLAAdapter.forward(output_craft_features=True, compute_actions=False)` on the
policy prompt with `PROBE_INSTRUCTION`, the scene image in every image slot (third-person and wrist), at the
CRaFT layer m and pooling; these are exactly the C_R / C_AQ that CRaFT's anchor compares, on probe scenes.

Everything runs in eval mode under no_grad on the unwrapped model (peft adapters active, i.e. merged in
effect), and each module's train flag is restored; nothing draws from a global RNG, so a run with the probe
trains exactly as one without it.

The arithmetic (float64, deterministic):

Linear CKA (centred kernel alignment with linear kernels) between X (n, p) and Y (n, q) of the SAME n inputs:

    Xc, Yc = X, Y with their column means removed
    CKA(X, Y) = ||Xc^T Yc||_F^2 / (||Xc^T Xc||_F * ||Yc^T Yc||_F)          in [0, 1]

It is 1 for X = Y and invariant to an orthogonal transform and an isotropic scaling of either side (a rotated
or rescaled but otherwise unchanged representation still scores 1).

Linear probe: one-vs-rest ridge regression onto one-hot targets, features standardised with the TRAINING
mean / std, an unpenalised bias, prediction = argmax of the scores (closed form, normal equations):

    Z = (X - mean) / std;  W = argmin ||[Z 1] W - onehot(y)||^2 + l2 * n * ||W[:-1]||^2

The penalty scales with n so that `l2` means the same for 100 or 10,000 training scenes.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from prismatic.training.metrics import WANDB_KEYS

log = logging.getLogger(__name__)

# Internal metric name (metrics.jsonl) -> W&B key (the one table of names is metrics.WANDB_KEYS).
PROBE_METRIC_NAMES = ("probe_vqa_accuracy", "probe_caption_nll", "probe_linear_accuracy", "probe_cka")
PROBE_WANDB_KEYS = {name: WANDB_KEYS[name] for name in PROBE_METRIC_NAMES}
# The instruction of the policy prompt the features are read with (any fixed text: C_R never sees it under
# causal attention, C_AQ does; fixed so that every probe run reads the same positions with the same words).
PROBE_INSTRUCTION = "look at the table"
DEFAULT_L2 = 1e-2


# ---------------------------------------------------------------------------------------------------------
# the arithmetic (pure functions)
# ---------------------------------------------------------------------------------------------------------
# Standard deviations below this are treated as constant features (left unscaled, not divided by ~0).
STD_FLOOR = 1e-8


def _as_matrix(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (samples, features) matrix, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} has non-finite values")
    return x.detach().to(torch.float64)


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA between X (n, p) and Y (n, q), rows = the same n inputs (see the module docstring)."""
    x, y = _as_matrix("x", x), _as_matrix("y", y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs the same inputs on both sides: x has {x.shape[0]} rows, y {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"linear_cka needs at least 2 inputs, got {x.shape[0]}")
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    denom = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if float(denom) == 0.0:
        raise ValueError("linear_cka is undefined for a constant feature matrix (every input has the same features)")
    return float(torch.linalg.matrix_norm(x.T @ y) ** 2 / denom)


@dataclass(frozen=True)
class LinearProbe:
    """A fitted one-vs-rest ridge probe: standardisation statistics, weights and the class values."""

    mean: Tensor  # (D,) float64, training-feature mean
    scale: Tensor  # (D,) float64, training-feature std (1 where the feature is constant)
    weight: Tensor  # (D + 1, C) float64, last row = bias
    classes: Tensor  # (C,) int64, the label value of each score column

    def predict(self, features: Tensor) -> Tensor:
        """(n, D) features -> (n,) predicted label values."""
        x = _as_matrix("features", features).to(self.mean.device)
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"the probe was fitted on {self.mean.shape[0]} features, got {x.shape[1]}")
        z = (x - self.mean) / self.scale
        scores = torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype, device=z.device)], dim=1) @ self.weight
        return self.classes[scores.argmax(dim=1)]


def _labels(name: str, labels: Tensor | list[int], n: int) -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D tensor of {n} labels (one per feature row), got shape "
                         f"{tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got {labels.dtype}")
    return labels.to(torch.int64)


def fit_linear_probe(features: Tensor, labels: Tensor | list[int], l2: float = 1e-2) -> LinearProbe:
    """Fit the ridge probe of the module docstring on (n, D) features and n integer labels."""
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0 (the normal equations need the ridge term), got {l2}")
    x = _as_matrix("features", features)
    y = _labels("labels", labels, x.shape[0]).to(x.device)
    classes = torch.unique(y)  # sorted
    if classes.numel() < 2:
        raise ValueError(f"a linear probe needs at least 2 classes in the training labels, got {classes.tolist()}")
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    scale = torch.where(std > STD_FLOOR, std, torch.ones_like(std))
    z = torch.cat([(x - mean) / scale, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
    onehot = (y.unsqueeze(1) == classes.unsqueeze(0)).to(x.dtype)
    penalty = torch.full((z.shape[1],), l2 * x.shape[0], dtype=x.dtype, device=x.device)
    penalty[-1] = 0.0  # the bias is not shrunk
    weight = torch.linalg.solve(z.T @ z + torch.diag(penalty), z.T @ onehot)
    return LinearProbe(mean=mean, scale=scale, weight=weight, classes=classes)


def probe_accuracy(probe: LinearProbe, features: Tensor, labels: Tensor | list[int]) -> float:
    """Fraction of rows whose predicted label equals the given one (labels unseen in training count as wrong)."""
    x = _as_matrix("features", features)
    y = _labels("labels", labels, x.shape[0]).to(probe.classes.device)
    if x.shape[0] == 0:
        raise ValueError("probe_accuracy needs at least one row")
    return float((probe.predict(x) == y).double().mean())


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------
@dataclass
class ProbeData:
    """One VQA / caption dataset, grouped by scene: what the probe needs from each split."""

    root: Path
    train_images: np.ndarray  # (S_train, H, W, 3) uint8, one per train scene
    train_attributes: dict[str, np.ndarray]  # attribute -> (S_train,) int64 labels
    heldout_images: np.ndarray  # (S_heldout, H, W, 3) uint8
    heldout_attributes: dict[str, np.ndarray]
    heldout_questions: list  # the held-out VQASample's (every question type; their captions: one per scene)

    @classmethod
    def load(cls, root: str | Path, image_size: int) -> ProbeData:
        from prismatic.vla.datasets.vqa import load_vqa_split

        root = Path(root)
        train, heldout = load_vqa_split(root, "train"), load_vqa_split(root, "heldout")
        for split, samples in (("train", train), ("heldout", heldout)):
            if not samples:
                raise ValueError(f"probe data {root}: the {split!r} split has no samples")
            size = samples[0].image.shape[:2]
            if size != (image_size, image_size):
                raise ValueError(f"probe data {root}: {split} images are {size[0]}x{size[1]}, the model takes "
                                 f"{image_size}x{image_size}; write the set with image_size={image_size}")
        t_images, t_attrs = _scenes(train)
        h_images, h_attrs = _scenes(heldout)
        if set(t_attrs) != set(h_attrs):
            raise ValueError(f"probe data {root}: train and held-out scenes carry different attributes "
                             f"({sorted(t_attrs)} vs {sorted(h_attrs)})")
        return cls(root, t_images, t_attrs, h_images, h_attrs, heldout)


def _scenes(samples: Sequence) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per scene (in scene-id order): its image and attribute labels."""
    first: dict[int, object] = {}
    for s in samples:
        first.setdefault(s.scene_id, s)
    ids = sorted(first)
    keys = sorted(first[ids[0]].attributes)
    for i in ids:
        if sorted(first[i].attributes) != keys:
            raise ValueError(f"scene {i} carries attributes {sorted(first[i].attributes)}, expected {keys}")
    images = np.stack([first[i].image for i in ids])
    attributes = {k: np.array([first[i].attributes[k] for i in ids], np.int64) for k in keys}
    return images, attributes


# ---------------------------------------------------------------------------------------------------------
# model plumbing
# ---------------------------------------------------------------------------------------------------------
def probe_module(model: nn.Module) -> nn.Module:
    """The VLAAdapter inside data-parallel / compile / peft wrappers (LoRA layers injected and active)."""
    from prismatic.training.craft.anchor import unwrap_model
    from prismatic.training.lora import base_module

    return base_module(unwrap_model(model))


@contextlib.contextmanager
def _eval_no_grad(vla: nn.Module, autocast_dtype: torch.dtype | None, device: torch.device):
    modes = [(m, m.training) for m in vla.modules()]
    vla.eval()
    cast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
            else contextlib.nullcontext())
    try:
        with torch.no_grad(), cast:
            yield
    finally:
        for module, training in modes:
            module.training = training


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


# ---------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    vqa_accuracy: float  # held-out closed-set VQA accuracy, all question types pooled
    vqa_accuracy_by_type: dict[str, float]
    vqa_chance: float  # expected accuracy of a uniform guess over each question's answer set
    vqa_seen_question_accuracy: float | None  # the training question forms (about new scenes)
    vqa_heldout_question_accuracy: float | None  # questions naming a held-out (colour, shape) combination
    caption_nll: float  # nats per caption token, averaged per caption, over the held-out scenes' captions
    linear_probe_accuracy: float  # mean over attributes of the held-out accuracy
    linear_probe_by_attribute: dict[str, float]
    linear_probe_majority: float  # mean over attributes of the held-out accuracy of the train-majority class
    cka: float | None  # CKA of [C_R ‖ C_AQ] to θ0 (None: no reference captured)
    cka_by_part: dict[str, float] = field(default_factory=dict)  # "raw" (C_R), "aq" (C_AQ)

    def metrics(self) -> dict[str, float]:
        """The logged numbers under their metrics.jsonl names (PROBE_WANDB_KEYS)."""
        out = {"probe_vqa_accuracy": self.vqa_accuracy, "probe_caption_nll": self.caption_nll,
               "probe_linear_accuracy": self.linear_probe_accuracy}
        if self.cka is not None:
            out["probe_cka"] = self.cka
        return out

    def lines(self) -> list[str]:
        """A readable summary (the script prints it)."""
        by_type = ", ".join(f"{k} {v:.3f}" for k, v in self.vqa_accuracy_by_type.items())
        by_attr = ", ".join(f"{k} {v:.3f}" for k, v in self.linear_probe_by_attribute.items())
        split = "".join(f"; {name} {value:.4f}" for name, value in (
            ("seen question forms", self.vqa_seen_question_accuracy),
            ("held-out combinations", self.vqa_heldout_question_accuracy)) if value is not None)
        out = [f"VQA accuracy (held-out): {self.vqa_accuracy:.4f} (chance {self.vqa_chance:.4f}{split}; {by_type})",
               f"caption NLL (held-out, nats/token): {self.caption_nll:.4f}",
               f"linear-probe accuracy (held-out): {self.linear_probe_accuracy:.4f} (majority class "
               f"{self.linear_probe_majority:.4f}; {by_attr})"]
        if self.cka is not None:
            parts = ", ".join(f"{k} {v:.4f}" for k, v in self.cka_by_part.items())
            out.append(f"CKA to θ0: {self.cka:.4f} ({parts})")
        return out


# ---------------------------------------------------------------------------------------------------------
# the probe
# ---------------------------------------------------------------------------------------------------------
class RetentionProbe:
    """The probe of one dataset for one model configuration. `capture_reference(model)` once at θ0 (for CKA),
    then `run(model)` at any point; neither changes the model (eval mode and train flags restored)."""

    def __init__(self, data_dir: str | Path, tokenizer, vla_config, *, layer_idx: int | None = None,
                 pooling: str = "mean", batch_size: int = 16, device: str | torch.device = "cpu",
                 autocast_dtype: torch.dtype | None = None, l2: float = DEFAULT_L2) -> None:
        from prismatic.models.processing import VLAProcessor
        from prismatic.training.craft.config import POOLINGS

        if batch_size < 1:
            raise ValueError(f"probe batch_size must be >= 1, got {batch_size}")
        if pooling not in POOLINGS:
            raise ValueError(f"probe pooling must be one of {POOLINGS}, got {pooling!r}")
        n_layers = vla_config.llm.num_hidden_layers
        self.layer_idx = n_layers // 2 if layer_idx is None else layer_idx
        if not 1 <= self.layer_idx <= n_layers:
            raise ValueError(f"probe layer_idx must be in [1, {n_layers}], got {self.layer_idx}")
        if not l2 > 0:
            raise ValueError(f"probe l2 must be > 0, got {l2}")
        self.data = ProbeData.load(data_dir, vla_config.vision.image_size)
        self.config = vla_config
        self.pooling, self.batch_size, self.l2 = pooling, batch_size, l2
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        processor = VLAProcessor(tokenizer, vla_config.vision.image_size, vla_config.num_images_in_input,
                                 vla_config.num_action_queries)
        self.tokenizer = tokenizer
        # The policy prompt of the feature path, tokenised once.
        self.feature_ids = torch.tensor(processor.prompt_ids(PROBE_INSTRUCTION), dtype=torch.long)
        self.reference: dict[str, Tensor] | None = None

    # ---- features ----
    def features(self, model: nn.Module, images: np.ndarray) -> dict[str, Tensor]:
        """Pooled C_R and C_AQ (fp32, CPU) of `images` (N, H, W, 3) through the VLA feature path."""
        from prismatic.models.vlm_lm import single_image_pixels
        from prismatic.training.craft.features import pool_tokens

        vla = probe_module(model)
        raw, aq = [], []
        with _eval_no_grad(vla, self.autocast_dtype, self.device):
            for lo, hi in _batches(len(images), self.batch_size):
                pix = single_image_pixels(images[lo:hi], self.config.vision.image_size)
                pix = torch.cat([pix] * self.config.num_images_in_input, dim=1).to(self.device)
                ids = self.feature_ids.to(self.device).unsqueeze(0).expand(hi - lo, -1)
                mask = torch.ones_like(ids, dtype=torch.bool)
                out = vla(ids, mask, pix, output_craft_features=True, craft_layer_idx=self.layer_idx,
                          compute_actions=False)
                raw.append(pool_tokens(out.raw_latent_features, self.pooling).cpu())
                aq.append(pool_tokens(out.action_query_features, self.pooling).cpu())
        return {"raw": torch.cat(raw), "aq": torch.cat(aq)}

    def capture_reference(self, model: nn.Module) -> None:
        """Store the held-out features of `model` as θ0 (the CKA reference)."""
        self.reference = self.features(model, self.data.heldout_images)

    # ---- language-model path (the pretraining's own evaluation: one convention for both) ----
    def language(self, model: nn.Module) -> dict:
        """Held-out VQA accuracy (overall, per type, chance) and caption NLL: `vlm_pretrain.evaluate_vqa`."""
        from prismatic.training.vlm_pretrain import evaluate_vqa

        vla = probe_module(model)
        with _eval_no_grad(vla, self.autocast_dtype, self.device):
            return evaluate_vqa(vla, self.tokenizer, self.data.heldout_questions, self.config.vision.image_size,
                                self.batch_size)

    # ---- linear probes ----
    def linear_probes(self, train_feats: dict[str, Tensor],
                      heldout_feats: dict[str, Tensor]) -> tuple[float, dict[str, float], float]:
        """(mean held-out accuracy, per attribute, mean majority-class accuracy) of probes on [C_R ‖ C_AQ]."""
        x_train = torch.cat([train_feats["raw"], train_feats["aq"]], dim=1)
        x_held = torch.cat([heldout_feats["raw"], heldout_feats["aq"]], dim=1)
        by_attr, majority = {}, []
        for name, labels in self.data.train_attributes.items():
            held_labels = self.data.heldout_attributes[name]
            if len(np.unique(labels)) < 2:
                log.warning("retention probe: attribute %r has one class in the train scenes; no probe for it", name)
                continue
            probe = fit_linear_probe(x_train, torch.from_numpy(labels), self.l2)
            by_attr[name] = probe_accuracy(probe, x_held, torch.from_numpy(held_labels))
            values, counts = np.unique(labels, return_counts=True)
            majority.append(float(np.mean(held_labels == values[np.argmax(counts)])))
        if not by_attr:
            raise ValueError(f"probe data {self.data.root}: no attribute has two classes among the train scenes")
        return float(np.mean(list(by_attr.values()))), by_attr, float(np.mean(majority))

    # ---- everything ----
    def run(self, model: nn.Module) -> ProbeResult:
        lang = self.language(model)
        heldout = self.features(model, self.data.heldout_images)
        train = self.features(model, self.data.train_images)
        lin, lin_by_attr, majority = self.linear_probes(train, heldout)
        cka, cka_parts = None, {}
        if self.reference is not None:
            cka_parts = {k: linear_cka(self.reference[k], heldout[k]) for k in ("raw", "aq")}
            cka = linear_cka(torch.cat([self.reference["raw"], self.reference["aq"]], dim=1),
                             torch.cat([heldout["raw"], heldout["aq"]], dim=1))
        result = ProbeResult(lang["vqa_accuracy"], lang["vqa_accuracy_by_type"], lang["chance_accuracy"],
                             lang["seen_question_accuracy"], lang["heldout_question_accuracy"], lang["caption_nll"],
                             lin, lin_by_attr, majority, cka, cka_parts)
        for name, value in result.metrics().items():
            if not math.isfinite(value):
                raise FloatingPointError(f"retention probe: {name} is {value} (the model's outputs are not finite)")
        return result


# ---------------------------------------------------------------------------------------------------------
# models to probe (the script vla-scripts/retention_probe.py and the benchmark)
# ---------------------------------------------------------------------------------------------------------
@dataclass
class ProbeTarget:
    """A model to probe, its tokenizer and config, and θ0 (the CKA reference) when one is known."""

    model: nn.Module
    tokenizer: object
    config: object  # VLAConfig
    reference: nn.Module | None  # θ0; None = no CKA
    layer_idx: int | None  # the CRaFT layer m the run used (None: num_layers // 2)
    pooling: str  # the CRaFT pooling the run used
    description: str


def base_vla(preset: str, vlm_path: str | Path | None, seed: int, device: torch.device,
             use_pro_version: bool | None = None):
    """(θ0 model, its VLAConfig) exactly as `train.build_model` makes it before LoRA: the VLM from `vlm_path`
    (random for tiny / mid without one) and the action queries drawn from `seed` (C_AQ reads them)."""
    from prismatic.models.config import get_preset
    from prismatic.models.loading import load_base_vlm
    from prismatic.models.vla import VLAAdapter

    config = get_preset(preset, use_pro_version=use_pro_version)
    torch.manual_seed(seed)
    if vlm_path is not None:
        model = load_base_vlm(vlm_path, config)
    elif preset in ("tiny", "mid"):
        model = VLAAdapter(config)
    else:
        raise ValueError(f"model preset {preset!r} needs a base VLM directory (--vlm_path)")
    return model.to(device).eval(), config


def load_checkpoint_target(checkpoint: str | Path, device: torch.device,
                           reference_vlm_path: str | Path | None = None) -> ProbeTarget:
    """One of our fine-tuning checkpoints (merged VLM: LoRA folded in) or a released VLA directory.

    θ0 for CKA: the base the run started from, rebuilt from the checkpoint's finetune_config.json (its
    --model_preset, --vlm_path and --seed) or from `reference_vlm_path`; none for a released checkpoint without
    a run config and no `reference_vlm_path`."""
    import json

    from prismatic.constants import FINETUNE_CONFIG_FILE
    from prismatic.models.loading import load_vla_checkpoint

    checkpoint = Path(checkpoint)
    loaded = load_vla_checkpoint(checkpoint, device=device)
    run_config = {}
    if (checkpoint / FINETUNE_CONFIG_FILE).is_file():
        run_config = json.loads((checkpoint / FINETUNE_CONFIG_FILE).read_text())
    reference = None
    preset = run_config.get("model_preset", loaded.config.preset)
    vlm_path = reference_vlm_path if reference_vlm_path is not None else run_config.get("vlm_path")
    if vlm_path is not None or (run_config and preset in ("tiny", "mid")):
        if vlm_path is not None and not Path(vlm_path).exists() and reference_vlm_path is None:
            raise FileNotFoundError(f"{checkpoint / FINETUNE_CONFIG_FILE} names the base VLM {vlm_path}, which does "
                                    f"not exist here (the CKA reference θ0); pass --reference_vlm_path")
        reference, _ = base_vla(preset, vlm_path, int(run_config.get("seed", 7)), device,
                                use_pro_version=loaded.config.action_head.use_pro_version)
    else:
        log.info("no θ0 known for %s (no run config with a base VLM, no --reference_vlm_path): no CKA", checkpoint)
    return ProbeTarget(loaded.model, loaded.processor.tokenizer, loaded.config, reference,
                       run_config.get("craft_anchor_layer_idx"), run_config.get("craft_pooling", "mean"),
                       f"checkpoint {checkpoint}")


def load_base_vlm_target(vlm_path: str | Path, preset: str, device: torch.device, seed: int = 7,
                         tokenizer_dir: str | Path | None = None) -> ProbeTarget:
    """A Prismatic base VLM (the pretrained model itself: θ0 = the model, so its CKA to θ0 is 1)."""
    from prismatic.models.processing import load_tokenizer

    model, config = base_vla(preset, vlm_path, seed, device)  # a clear error for a directory without checkpoints/
    vlm_dir = Path(vlm_path)
    if tokenizer_dir is None:  # the base-VLM directory (a .pt names checkpoints/<file> inside it)
        tokenizer_dir = vlm_dir.parent.parent if vlm_dir.is_file() else vlm_dir
    return ProbeTarget(model, load_tokenizer(tokenizer_dir), config, model, None, "mean", f"base VLM {vlm_path}")


def probe_target(target: ProbeTarget, probe_data: str | Path, device: torch.device, batch_size: int = 16,
                 autocast_dtype: torch.dtype | None = None, layer_idx: int | None = None,
                 pooling: str | None = None) -> ProbeResult:
    """Run the probe on `target` (its reference, if any, is captured first)."""
    probe = RetentionProbe(probe_data, target.tokenizer, target.config,
                           layer_idx=layer_idx if layer_idx is not None else target.layer_idx,
                           pooling=pooling or target.pooling, batch_size=batch_size, device=device,
                           autocast_dtype=autocast_dtype)
    if target.reference is not None:
        probe.capture_reference(target.reference)
    return probe.run(target.model)
