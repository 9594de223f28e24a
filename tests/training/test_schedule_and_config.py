import pytest
import torch

from prismatic.training.config import FinetuneConfig
from prismatic.training.schedule import lr_factor, make_scheduler
from prismatic.training.train import make_run_id


def test_warmup_then_decay_compose():
    # warmup 10 steps from 10% to 100%, decay x0.1 from step 20 on
    assert lr_factor(0, 10, 20) == pytest.approx(0.1)
    assert lr_factor(5, 10, 20) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(10, 10, 20) == pytest.approx(1.0)
    assert lr_factor(19, 10, 20) == pytest.approx(1.0)
    assert lr_factor(20, 10, 20) == pytest.approx(0.1)
    # no warmup: constant until decay (upstream's default silently disabled this decay)
    assert lr_factor(0, 0, 3) == 1.0 and lr_factor(3, 0, 3) == pytest.approx(0.1)


def test_scheduler_applies_factor_and_resumes_exactly():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = make_scheduler(opt, warmup_steps=4, decay_step=6)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0, 1.0, 0.1, 0.1])
    # a fresh scheduler restored from the state dict continues identically
    opt2 = torch.optim.AdamW([p], lr=1.0)
    sched2 = make_scheduler(opt2, warmup_steps=4, decay_step=6)
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"batch_size": 0}, "--batch_size"),
        ({"grad_accumulation_steps": 0}, "--grad_accumulation_steps"),
        ({"learning_rate": 0.0}, "--learning_rate"),
        ({"lr_warmup_steps": -1}, "--lr_warmup_steps"),
        ({"max_grad_norm": 0.0}, "--max_grad_norm"),
        ({"lora_dropout": 1.0}, "--lora_dropout"),
        ({"device": "tpu"}, "--device"),
        ({"precision": "fp16"}, "--precision"),
        ({"wandb_mode": "on"}, "--wandb_mode"),
        ({"model_preset": "big"}, "--model_preset"),
        ({"n_shot_per_task": 0}, "--n_shot_per_task"),
        ({"resume_step": 5}, "--resume_step"),
        ({"num_images_in_input": 1}, "--num_images_in_input"),
        ({"max_steps": 0}, "--max_steps"),
        ({"save_freq": 0}, "--save_freq"),
    ],
)
def test_bad_flags_name_the_flag(kwargs, flag):
    base = {"model_preset": "tiny"}
    base.update(kwargs)
    with pytest.raises(ValueError, match=flag):
        FinetuneConfig(**base)


def test_real_preset_needs_vlm_path(tmp_path):
    with pytest.raises(ValueError, match="--vlm_path"):
        FinetuneConfig(model_preset="vla-adapter-pro")
    with pytest.raises(ValueError, match="--vlm_path does not exist"):
        FinetuneConfig(model_preset="vla-adapter-pro", vlm_path=str(tmp_path / "nope"))


def test_anchor_cache_requires_no_augmentation():
    with pytest.raises(ValueError, match="--craft_anchor_cache"):
        FinetuneConfig(model_preset="tiny", use_craft=True, craft_anchor_cache=True, image_aug=True)


def test_run_id_is_upstream_style_and_distinguishes_runs():
    a = make_run_id(FinetuneConfig(model_preset="tiny", dataset_name="libero_synthetic", batch_size=4,
                                   grad_accumulation_steps=2))
    assert a.startswith("tiny+libero_synthetic+b8+lr-0.0005+lora-r32+dropout-0.0--image_aug")
    b = make_run_id(FinetuneConfig(model_preset="tiny", dataset_name="libero_synthetic", batch_size=4,
                                   grad_accumulation_steps=2,
                                   use_craft=True))
    assert b != a and "--craft" in b
    assert make_run_id(FinetuneConfig(model_preset="tiny", run_id_override="x")) == "x"
