"""Resuming a CRaFT run: changed CRaFT semantics are refused with the flag named; the safe ones can be changed
through --resume_override_flags (logged), --craft_retention_weight then resets λ."""

import json

import pytest

from prismatic.training.config import FinetuneConfig
from prismatic.training.metrics import read_metrics
from prismatic.training.train import RESUME_OVERRIDES_FILE, train


def _cfg(data_root, run_root, **kw):
    base = dict(model_preset="tiny", dataset_name="libero_synthetic", data_root_dir=str(data_root),
                run_root_dir=str(run_root), device="cpu", batch_size=2, learning_rate=1e-3, max_steps=1,
                save_freq=1, shuffle_buffer_size=16, image_aug=False, lora_rank=4, wandb_mode="disabled",
                wandb_log_freq=1, seed=3, run_id_override="r", use_craft=True, craft_dual_lr=0.5,
                craft_retention_budget=0.0)
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.mark.slow
def test_changed_craft_semantics_are_refused_and_safe_flags_can_be_overridden(synthetic_data_root, tmp_path):
    train(_cfg(synthetic_data_root, tmp_path))
    for flag, value in [("craft_pooling", "max"), ("craft_normalize_parts", True), ("craft_retention_weight", 0.5),
                        ("craft_enable_dual", False), ("craft_projection_granularity", "global"),
                        ("craft_retention_budget", 0.2), ("max_grad_norm", 1.0)]:
        with pytest.raises(ValueError, match=flag):
            train(_cfg(synthetic_data_root, tmp_path, max_steps=2, resume=True, **{flag: value}))
    with pytest.raises(ValueError, match="cannot be overridden"):
        train(_cfg(synthetic_data_root, tmp_path, max_steps=2, resume=True, craft_pooling="max",
                   resume_override_flags="craft_pooling"))

    # ε and the initial λ changed on purpose: λ restarts from the new weight and moves with the new ε.
    result = train(_cfg(synthetic_data_root, tmp_path, max_steps=2, resume=True, craft_retention_budget=0.05,
                        craft_retention_weight=0.25,
                        resume_override_flags="craft_retention_budget,craft_retention_weight"))
    last = read_metrics(result.run_dir)[-1]
    assert last["step"] == 2
    assert last["lambda"] == pytest.approx(max(0.0, 0.25 + 0.5 * (last["retention_loss"] - 0.05)), rel=1e-9)
    records = [json.loads(line) for line in (result.run_dir / RESUME_OVERRIDES_FILE).read_text().splitlines()]
    assert {r["flag"] for r in records} == {"craft_retention_budget", "craft_retention_weight"}
