"""The anchor θ0 and its features Φ(θ0; x) (CRAFT_SPEC.md, "Anchor features").

θ0 is the trainable state at the START of fine-tuning, fixed for the whole run and across resumes. The
anchor features are recomputed online on the same (augmented) batch with one extra no-grad forward of
the unwrapped model at θ0. Two modes:

    "disable_adapters"  LoRA (peft PeftModel) whose every LoRA B is exactly zero at the start: θ0's
                        adapter part is "no adapter", so the forward runs inside peft's
                        `disable_adapter()`. The other trainables that influence Φ (the action queries,
                        anything else fully trained inside the VLM) come from a frozen snapshot.
    "snapshot"          full fine-tuning, or LoRA whose B is not zero at the start (then the adapters
                        are not the identity and disabling them is not θ0): every trainable parameter
                        that influences Φ, LoRA ones included, comes from a frozen snapshot.
                        Memory: one copy of those parameters on the training device (full fine-tuning
                        of the real-size model: 1.25 B parameters in front of the head, 5.0 GB in fp32,
                        2.5 GB in bf16).

Frozen parameters are never copied: nothing changes them. Parameters of modules that do not influence
Φ (action head, proprio projector) are not copied either. The snapshot lives on the training device and
is swapped in for the forward (parameter `.data` only, restored in a `finally`), so no weights move
per step. A resumed run restores the snapshot saved at the start (`from_state_dict`): it never snapshots
the weights it just loaded.

The anchor forward runs in eval mode (restored module by module afterwards): the anchor is a target,
and dropout (e.g. LoRA dropout in snapshot mode) would only add noise to it. It runs with autocast's weight
cache off (`_uncached_autocast`), so it sees θ0 and leaves θ's cached casts alone even inside the training
forward's autocast region.

θ0's frozen part is the base model reloaded from --vlm_path on resume: `base_fingerprint` (a hash of a strided
sample of every frozen tensor) is saved with the anchor and checked by `from_state_dict`.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from prismatic.training.craft.config import POOLINGS
from prismatic.training.craft.features import PooledFeatures, pool_features

log = logging.getLogger(__name__)

ANCHOR_MODES = ("disable_adapters", "snapshot")
STATE_FORMAT_VERSION = 1
# Batch keys passed to the model for the anchor forward (no actions: no loss is needed).
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "proprio")
# Sub-modules of the VLA whose parameters do not influence Φ (both features are read before the head).
PHI_INDEPENDENT_PREFIXES = ("action_head.", "proprio_projector.")


# ----------------------------------------------------------------------------------------------------
# model plumbing
# ----------------------------------------------------------------------------------------------------
def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip data-parallel wrappers (`.module`) and torch.compile's `_orig_mod`; keeps a peft wrapper."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
            continue
        orig = getattr(model, "_orig_mod", None)
        if isinstance(orig, nn.Module):
            model = orig
            continue
        return model


def _is_peft_model(model: nn.Module) -> bool:
    # peft is only imported by code that builds a PeftModel, so an un-imported peft means "not peft".
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def _base_module(model: nn.Module) -> nn.Module:
    """The VLA module whose parameter names key the snapshot (inside peft's wrapper, LoRA layers injected)."""
    return model.get_base_model() if _is_peft_model(model) else model


def _resolve_attr(module: nn.Module, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _adapter_parameter_names(base: nn.Module) -> set[str]:
    """Names (relative to `base`) of peft adapter parameters: LoRA A/B/magnitude, modules_to_save copies, …"""
    if sys.modules.get("peft") is None:
        return set()
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    names: set[str] = set()
    for module_name, module in base.named_modules():
        if not isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            continue
        for attr in module.adapter_layer_names:
            container = _resolve_attr(module, attr)
            if isinstance(container, nn.Module):
                prefix = f"{module_name}.{attr}." if module_name else f"{attr}."
                names.update(prefix + n for n, _ in container.named_parameters(remove_duplicate=False))
            elif isinstance(container, nn.Parameter):
                names.add(f"{module_name}.{attr}" if module_name else attr)
    return names


def lora_b_is_zero(base: nn.Module) -> tuple[bool, str]:
    """Whether every LoRA B (weights and biases) is exactly zero, i.e. the adapters are the identity.

    Returns (ok, reason). Adapters of other peft tuner types cannot be verified and count as not ok.
    One host sync for the whole model.
    """
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer

    flags: list[Tensor] = []
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            for attr in ("lora_B", "lora_embedding_B"):
                container = getattr(module, attr, None)
                if isinstance(container, nn.Module):
                    flags.extend((p != 0).any() for p in container.parameters())
        elif isinstance(module, BaseTunerLayer):
            return False, (f"adapter layer {name!r} is {type(module).__name__}, not LoRA: cannot verify that it "
                           f"starts as the identity")
    if not flags:
        return True, "no LoRA B found"
    nonzero = int(torch.stack([f.to(flags[0].device) for f in flags]).sum())
    if nonzero:
        return False, f"{nonzero} of {len(flags)} LoRA B tensors are not zero"
    return True, f"all {len(flags)} LoRA B tensors are zero"


def _phi_parameters(base: nn.Module, mode: str, exclude_prefixes: Sequence[str]) -> dict[str, nn.Parameter]:
    """The trainable parameters whose θ0 values the anchor must supply in `mode`."""
    adapter = _adapter_parameter_names(base) if mode == "disable_adapters" else set()
    return {
        name: p
        for name, p in base.named_parameters()
        if p.requires_grad and not name.startswith(tuple(exclude_prefixes)) and name not in adapter
    }


@contextmanager
def _temporarily(objects: Sequence[Any], attr: str, value: Any) -> Iterator[None]:
    """Set `attr` to `value` on every object for the duration, then restore each object's own value."""
    saved = [getattr(o, attr) for o in objects]
    try:
        for o in objects:
            setattr(o, attr, value)
        yield
    finally:
        for o, v in zip(objects, saved):
            setattr(o, attr, v)


def _eval_mode(modules: Sequence[nn.Module]):
    """Eval mode for the duration, then every sub-module's own flag restored (not a blanket .train()).
    Takes the module list cached at the first forward: walking the tree each step is measurable overhead."""
    return _temporarily(modules, "training", False)


def _adapters_disabled(layers: Sequence[nn.Module]):
    """Bypass every peft adapter layer for the duration (what `PeftModel.disable_adapter()` does for LoRA:
    each layer's forward returns its base layer's output), restoring each layer's own flag.

    peft's context manager also re-scans the whole model twice per call (adapter status checks), which
    costs more than the forward itself for small models; the layer list here is collected once.
    """
    return _temporarily(layers, "_disable_adapters", True)


@contextmanager
def _swapped_parameters(pairs: Sequence[tuple[nn.Parameter, Tensor]]) -> Iterator[None]:
    """Give each parameter the θ0 value for the duration (same device: no copy), restored in `finally`.
    Only `.data` is swapped: the Parameter objects (and any graph that holds them) stay the same, and the
    values are back before the training backward reads them."""
    saved = [p.data for p, _ in pairs]
    try:
        for p, value in pairs:
            p.data = value
        yield
    finally:
        for (p, _), data in zip(pairs, saved):
            p.data = data


def _uncached_autocast(device: torch.device):
    """The caller's autocast (same dtype, same on/off), but with autocast's weight cache off.

    Autocast caches the low-precision cast of every fp32 leaf Parameter for the whole (outermost) autocast
    region, keyed by the Parameter. The anchor forward swaps θ0 values into `p.data` of the same
    Parameters: with the cache on, an anchor forward after the training forward in one region would reuse
    the casts of the CURRENT weights (anchor = Φ(θ)), and a training forward after the anchor forward would
    reuse the casts of θ0. With the cache off here, the anchor casts what `p.data` holds now and leaves the
    cache untouched."""
    kind = device.type
    if not torch.is_autocast_enabled(kind):
        return nullcontext()
    return torch.autocast(device_type=kind, dtype=torch.get_autocast_dtype(kind), cache_enabled=False)


def base_fingerprint(model: nn.Module, exclude_prefixes: Sequence[str] = PHI_INDEPENDENT_PREFIXES) -> dict[str, str]:
    """A fingerprint of the FROZEN weights θ0 is built from (the base VLM loaded from --vlm_path): per frozen
    parameter, a SHA-256 of its name, shape, dtype and a strided sample of 1024 of its values (raw bytes).

    Exact and device-independent (the same file gives the same bits on every device); one small
    device-to-host copy per tensor, once at start and once on resume. Trainable parameters are not
    included: θ0's values of those are in the snapshot (or are LoRA adapters, disabled in θ0)."""
    import hashlib

    base = _base_module(unwrap_model(model))
    prints: dict[str, str] = {}
    with torch.no_grad():
        for name, p in base.named_parameters():
            if p.requires_grad or name.startswith(tuple(exclude_prefixes)) or p.device.type == "meta":
                continue
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 1024)][:1024].cpu().contiguous()
            digest = hashlib.sha256(f"{name}|{tuple(p.shape)}|{p.dtype}|".encode())
            digest.update(sample.view(torch.uint8).numpy().tobytes() if sample.numel() else b"")
            prints[name] = digest.hexdigest()[:16]
    return prints


def check_base_fingerprint(saved: Mapping[str, str], current: Mapping[str, str]) -> None:
    """Raise naming --vlm_path when the frozen base weights differ from the ones the run started from."""
    missing = sorted(set(saved) - set(current))
    unexpected = sorted(set(current) - set(saved))
    changed = sorted(n for n in set(saved) & set(current) if saved[n] != current[n])
    if missing or unexpected or changed:
        raise ValueError(
            "the frozen base weights that θ0 (the CRaFT anchor) is built from differ from the ones this run "
            f"started with: changed {changed[:5]} ({len(changed)}), missing {missing[:5]} ({len(missing)}), "
            f"new {unexpected[:5]} ({len(unexpected)}). Resume with the --vlm_path (and model preset) the run "
            "started from: the anchor would otherwise silently move to a different model"
        )


# ----------------------------------------------------------------------------------------------------
# per-sample anchor-feature cache
# ----------------------------------------------------------------------------------------------------
class AnchorFeatureCache:
    """Pooled anchor features per sample key, on the host (it grows with the dataset: 8·D bytes/sample).

    Only valid when a sample key always maps to the same model input (no augmentation). Not saved with
    checkpoints: θ0 is fixed, so a resumed run recomputes identical entries.
    """

    def __init__(self) -> None:
        self._raw: dict[Hashable, Tensor | None] = {}
        self._aq: dict[Hashable, Tensor | None] = {}

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._raw

    def put(self, keys: Sequence[Hashable], features: PooledFeatures) -> None:
        raw = None if features.raw is None else features.raw.detach().float().cpu()
        aq = None if features.aq is None else features.aq.detach().float().cpu()
        for i, key in enumerate(keys):
            self._raw[key] = None if raw is None else raw[i].clone()
            self._aq[key] = None if aq is None else aq[i].clone()

    def get(self, keys: Sequence[Hashable], device: torch.device) -> PooledFeatures:
        missing = [k for k in keys if k not in self._raw]
        if missing:
            raise KeyError(f"anchor cache has no entry for {missing[:5]}")

        def gather(store: dict[Hashable, Tensor | None]) -> Tensor | None:
            rows = [store[k] for k in keys]
            if any(r is None for r in rows):
                return None
            stacked = torch.stack(rows)
            if device.type == "cuda":  # pinned + non_blocking: the copy does not stall the host
                return stacked.pin_memory().to(device, non_blocking=True)
            return stacked.to(device)

        return PooledFeatures(raw=gather(self._raw), aq=gather(self._aq))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in (self._raw, self._aq) for t in s.values() if t is not None)


def _select_rows(batch: Mapping[str, Any], rows: list[int], batch_size: int) -> dict[str, Any]:
    """Sub-batch of `rows` (row views stacked: no index tensor copied from the host)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch_size:
            out[key] = torch.stack([value[i] for i in rows])
        elif isinstance(value, (list, tuple)) and len(value) == batch_size:
            out[key] = [value[i] for i in rows]
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------
# the anchor
# ----------------------------------------------------------------------------------------------------
class AnchorModel:
    """θ0 (as a mode + a frozen snapshot) and the no-grad forward that yields Φ(θ0; x)."""

    def __init__(
        self,
        mode: str,
        snapshot: dict[str, Tensor],
        layer_idx: int,
        pooling: str = "mean",
        use_cache: bool = False,
        exclude_prefixes: Sequence[str] = PHI_INDEPENDENT_PREFIXES,
    ) -> None:
        if mode not in ANCHOR_MODES:
            raise ValueError(f"unknown anchor mode {mode!r}; choose one of {ANCHOR_MODES}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or layer_idx < 0:
            raise ValueError(f"anchor layer index must be an integer >= 0, got {layer_idx!r} "
                             "(resolve it with CraftConfig.resolve_anchor_layer)")
        self.mode = mode
        self.snapshot = snapshot  # name (relative to the VLA module) -> frozen θ0 value on the training device
        self.layer_idx = layer_idx
        self.pooling = pooling
        self.exclude_prefixes = tuple(exclude_prefixes)
        self.cache = AnchorFeatureCache() if use_cache else None
        # Fingerprint of the frozen base weights θ0 is built from (`base_fingerprint`); None = unknown
        # (a checkpoint written before fingerprints existed).
        self.fingerprint: dict[str, str] | None = None
        self._verified_model: int | None = None

    # ---- construction ----
    @classmethod
    def from_initial_state(
        cls,
        model: nn.Module,
        layer_idx: int,
        pooling: str = "mean",
        use_cache: bool = False,
        exclude_prefixes: Sequence[str] = PHI_INDEPENDENT_PREFIXES,
    ) -> AnchorModel:
        """Snapshot θ0 from `model` as it is NOW: call once, at the start of fine-tuning, before any step."""
        model = unwrap_model(model)
        base = _base_module(model)
        meta = [n for n, p in base.named_parameters() if p.device.type == "meta"]
        if meta:
            raise ValueError(f"cannot snapshot θ0 from parameters on the meta device: {meta[:5]}")
        mode = "snapshot"
        if _is_peft_model(model):
            ok, reason = lora_b_is_zero(base)
            if ok:
                mode = "disable_adapters"
                log.info("CRaFT anchor: θ0 = base model with adapters disabled (%s)", reason)
            else:
                log.warning(
                    "CRaFT anchor: %s, so disabling the adapters does not give θ0; falling back to a frozen "
                    "snapshot of all trainable parameters that influence the features (LoRA included)", reason
                )
        params = _phi_parameters(base, mode, exclude_prefixes)
        with torch.no_grad():
            snapshot = {name: p.detach().clone() for name, p in params.items()}
        anchor = cls(mode, snapshot, layer_idx, pooling, use_cache, exclude_prefixes)
        anchor.fingerprint = base_fingerprint(model, exclude_prefixes)
        log.info("CRaFT anchor (%s): %d frozen tensors, %.1f MB on %s", mode, len(snapshot),
                 anchor.snapshot_nbytes / 2**20, sorted({str(t.device) for t in snapshot.values()}) or "-")
        return anchor

    @classmethod
    def from_state_dict(
        cls,
        model: nn.Module,
        state: Mapping[str, Any],
        layer_idx: int,
        pooling: str = "mean",
        use_cache: bool = False,
        exclude_prefixes: Sequence[str] = PHI_INDEPENDENT_PREFIXES,
    ) -> AnchorModel:
        """Resume: θ0 from a checkpoint's `state_dict()`; the (already trained) weights of `model` only
        decide where the snapshot tensors go and validate names, shapes and dtypes. The frozen base weights
        of `model` (reloaded from --vlm_path) must match the checkpoint's fingerprint of them."""
        mode, saved = cls._parse_state(state)
        model = unwrap_model(model)
        if mode == "disable_adapters" and not _is_peft_model(model):
            raise ValueError("the checkpointed CRaFT anchor disables peft adapters, but the model is not a peft model "
                             "(was the run started with --use_lora True?)")
        expected = _phi_parameters(_base_module(model), mode, exclude_prefixes)
        snapshot = cls._match_snapshot(saved, expected)
        anchor = cls(mode, snapshot, layer_idx, pooling, use_cache, exclude_prefixes)
        anchor.fingerprint = base_fingerprint(model, exclude_prefixes)
        saved_print = state.get("base_fingerprint")
        if saved_print is None:
            log.warning("this checkpoint has no fingerprint of the frozen base weights (written by an older "
                        "version): cannot verify that --vlm_path gives the same θ0 as at the start")
        else:
            check_base_fingerprint(saved_print, anchor.fingerprint)
        return anchor

    @staticmethod
    def _parse_state(state: Mapping[str, Any]) -> tuple[str, Mapping[str, Tensor]]:
        missing = {"format_version", "mode", "snapshot"} - set(state)
        if missing:
            raise KeyError(f"CRaFT anchor state is missing {sorted(missing)}")
        if state["format_version"] != STATE_FORMAT_VERSION:
            raise ValueError(f"unsupported CRaFT anchor state version {state['format_version']} "
                             f"(this code reads {STATE_FORMAT_VERSION})")
        if state["mode"] not in ANCHOR_MODES:
            raise ValueError(f"unknown anchor mode {state['mode']!r} in the checkpoint")
        return state["mode"], state["snapshot"]

    @staticmethod
    def _match_snapshot(saved: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> dict[str, Tensor]:
        missing = sorted(set(expected) - set(saved))
        unexpected = sorted(set(saved) - set(expected))
        bad = [
            f"{n}: saved {tuple(saved[n].shape)} {saved[n].dtype}, model {tuple(expected[n].shape)} {expected[n].dtype}"
            for n in sorted(set(saved) & set(expected))
            if saved[n].shape != expected[n].shape or saved[n].dtype != expected[n].dtype
        ]
        if missing or unexpected or bad:
            raise ValueError(
                "CRaFT anchor snapshot does not match the model's trainable parameters that influence the "
                f"features: missing {missing[:10]} ({len(missing)}), unexpected {unexpected[:10]} "
                f"({len(unexpected)}), mismatched {bad[:10]} ({len(bad)})"
            )
        return {n: saved[n].detach().to(expected[n].device).clone() for n in expected}

    # ---- checkpointing ----
    def state_dict(self) -> dict[str, Any]:
        """{"format_version", "mode", "snapshot": {name: CPU tensor}, "base_fingerprint": {name: hex}};
        loadable with torch.load(weights_only=True)."""
        return {
            "format_version": STATE_FORMAT_VERSION,
            "mode": self.mode,
            "snapshot": {n: t.detach().cpu().clone() for n, t in self.snapshot.items()},
            "base_fingerprint": None if self.fingerprint is None else dict(self.fingerprint),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Overwrite the snapshot values in place (same mode, names, shapes, dtypes required).

        To resume a run use `from_state_dict`, which never snapshots the loaded weights.
        """
        mode, saved = self._parse_state(state)
        if mode != self.mode:
            raise ValueError(f"checkpointed anchor mode {mode!r} != this anchor's mode {self.mode!r}; "
                             f"resume with AnchorModel.from_state_dict")
        matched = self._match_snapshot(saved, self.snapshot)
        with torch.no_grad():
            for name, value in matched.items():
                self.snapshot[name].copy_(value)
        if self.cache is not None:
            self.cache = AnchorFeatureCache()

    @property
    def snapshot_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.snapshot.values())

    # ---- the anchor forward ----
    def _verify(self, model: nn.Module, base: nn.Module) -> None:
        """First use with a model: the snapshot must address its parameters on their devices."""
        if self.mode == "disable_adapters" and not _is_peft_model(model):
            raise TypeError("this CRaFT anchor disables peft adapters: pass the peft model (or its DDP wrapper), "
                            f"got {type(model).__name__}")
        params = dict(base.named_parameters())
        unknown = [n for n in self.snapshot if n not in params]
        if unknown:
            raise ValueError(f"CRaFT anchor snapshot names not found in the model: {unknown[:10]}")
        moved = [n for n, t in self.snapshot.items() if t.device != params[n].device or t.shape != params[n].shape]
        if moved:
            raise ValueError(f"CRaFT anchor snapshot tensors differ in device/shape from the model's: {moved[:10]} "
                             "(build the anchor after moving the model to its training device)")
        # Handles reused by every anchor forward (collected once per model).
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._modules = list(base.modules())
        self._adapter_layers = [m for m in self._modules if isinstance(m, BaseTunerLayer)]
        self._snapshot_pairs = [(params[n], t) for n, t in self.snapshot.items()]
        # The head does not influence Φ: skip it when the model supports that (VLAAdapter does).
        accepts = inspect.signature(base.forward).parameters
        self._skip_head_kwargs = {"compute_actions": False} if "compute_actions" in accepts else {}
        self._verified_model = id(model)

    @torch.no_grad()
    def compute_features(self, model: nn.Module, batch: Mapping[str, Any]) -> PooledFeatures:
        """Φ(θ0; x), pooled, for every row of `batch` (no cache). Runs under the caller's autocast."""
        model = unwrap_model(model)
        base = _base_module(model)
        if self._verified_model != id(model):
            self._verify(model, base)
        inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
        adapters_off = _adapters_disabled(self._adapter_layers) if self.mode == "disable_adapters" else nullcontext()
        with adapters_off, _eval_mode(self._modules), _swapped_parameters(self._snapshot_pairs), \
                _uncached_autocast(batch["input_ids"].device):
            out = base(**inputs, output_craft_features=True, craft_layer_idx=self.layer_idx,
                       **self._skip_head_kwargs)
        raw, aq = getattr(out, "raw_latent_features", None), getattr(out, "action_query_features", None)
        if raw is None or aq is None:
            raise RuntimeError("the model returned no CRaFT features (raw_latent_features / action_query_features) "
                               "although output_craft_features=True was passed")
        return pool_features(raw, aq, self.pooling)

    def anchor_features(
        self, model: nn.Module, batch: Mapping[str, Any], sample_keys: Sequence[Hashable] | None = None
    ) -> PooledFeatures:
        """Φ(θ0; x) pooled to (B, D) per part (fp32). With the cache on, `sample_keys` (one per row) are
        required; only rows not cached yet are computed (as a sub-batch)."""
        if self.cache is None:
            return self.compute_features(model, batch)
        if sample_keys is None:
            raise ValueError("the CRaFT anchor cache is on (--craft_anchor_cache True) but the batch has no sample keys")
        batch_size = int(batch["input_ids"].shape[0])
        if len(sample_keys) != batch_size:
            raise ValueError(f"got {len(sample_keys)} sample keys for a batch of {batch_size}")
        if len(set(sample_keys)) != len(sample_keys):
            raise ValueError("duplicate sample keys in one batch: the cache key must identify a sample uniquely")
        missing = [i for i, k in enumerate(sample_keys) if k not in self.cache]
        if missing:
            sub = batch if len(missing) == batch_size else _select_rows(batch, missing, batch_size)
            self.cache.put([sample_keys[i] for i in missing], self.compute_features(model, sub))
        return self.cache.get(sample_keys, batch["input_ids"].device)
