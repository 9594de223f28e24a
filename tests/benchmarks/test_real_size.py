"""benchmarks/bench_real_size.py and vla-scripts/make_random_base_vlm.py through their real code paths, at a
size CI can afford (the real-size run itself is a documented command, docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from prismatic.models.config import get_preset
from prismatic.models.loading import load_base_vlm
from prismatic.models.processing import load_tokenizer
from prismatic.models.vla import VLAAdapter
from prismatic.training.lora import apply_lora, trainable_named_parameters

REPO = Path(__file__).resolve().parents[2]
LAST_LINE = re.compile(r"^tiny-size step: baseline (\d+\.\d+) s, craft (\d+\.\d+) s, ratio (\d+\.\d+), "
                       r"peak (\d+\.\d+) GB$")


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}


def test_real_size_trainable_count_is_312_5_million():
    """LoRA r=64 on every VLM nn.Linear + the fully trained head, queries and proprio projector, counted
    independently (r * (in + out) per adapted layer) on the meta device."""
    with torch.device("meta"):
        model = VLAAdapter(get_preset("vla-adapter-pro"), attn_implementation="sdpa")
    vlm_linears = [m for n, m in model.named_modules() if isinstance(m, nn.Linear)
                   and n.startswith(("vision_backbone.", "projector.", "language_model."))
                   and n != "language_model.lm_head"]
    lora = sum(64 * (m.in_features + m.out_features) for m in vlm_linears)
    full = sum(p.numel() for n, p in model.named_parameters()
               if n.startswith(("action_queries.", "action_head.", "proprio_projector.")))
    base = sum(p.numel() for p in model.parameters())
    with torch.device("meta"):
        wrapped = apply_lora(model, rank=64, alpha=128, dropout=0.0)
    trainable = sum(p.numel() for _, p in trainable_named_parameters(wrapped))
    assert trainable == lora + full == 312_531_743
    assert full == 217_864_223 + 64 * 896 + (8 * 896 + 896 + 896 * 896 + 896)  # head + queries + proprio
    assert round((base + lora) / 1e9, 3) == 1.565


@pytest.mark.slow
def test_bench_real_size_code_path_at_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_real_size.py", "--preset", "tiny", "--precisions",
                           "fp32", "bf16", "--device", "cpu", "--lora_rank", "4", "--json_out", str(out)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    match = LAST_LINE.match(last)
    assert match, last
    report = json.loads(out.read_text())
    fp32 = report["precisions"]["fp32"]
    assert float(match.group(1)) == pytest.approx(fp32["baseline"]["step_s"], abs=0.006)
    assert float(match.group(2)) == pytest.approx(fp32["craft"]["step_s"], abs=0.006)
    assert fp32["ratio"] == pytest.approx(fp32["craft"]["step_s"] / fp32["baseline"]["step_s"])
    for precision in ("fp32", "bf16"):
        for method in ("baseline", "craft"):
            entry = report["precisions"][precision][method]
            assert entry["step_s"] > 0 and entry["peak_rss_gb"] > 0 and entry["loss"] == entry["loss"]  # not NaN
    assert report["images"] == 2 and report["batch_size"] == 1
    assert report["trainable_params"] < report["total_params"]
    assert "chunk_latency_s" not in report  # CUDA only
    # Bad flags are refused by name.
    bad = subprocess.run([sys.executable, "benchmarks/bench_real_size.py", "--precisions", "fp16"], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--precisions" in bad.stderr


def _load_script():
    spec = importlib.util.spec_from_file_location("make_random_base_vlm", REPO / "vla-scripts/make_random_base_vlm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_base_vlm_directory_loads_strictly(tmp_path):
    script = _load_script()
    out = script.write_random_base_vlm(tmp_path / "base", "tiny", seed=3, dtype="bfloat16")
    config = get_preset("tiny")
    loaded = load_base_vlm(out, config, attn_implementation="sdpa")  # strict: every VLM key, every shape
    torch.manual_seed(3)
    source = VLAAdapter(config, attn_implementation="sdpa")
    ours, theirs = loaded.merged_vlm_state_dict(), source.merged_vlm_state_dict()
    for key, value in theirs.items():
        if not key.startswith("action_queries"):
            torch.testing.assert_close(ours[key], value.to(torch.bfloat16).float(), rtol=0, atol=0, msg=key)
    tokenizer = load_tokenizer(out)
    assert len(tokenizer) <= config.llm.vocab_size
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") is not None
    assert "RANDOM-WEIGHT STAND-IN" in (out / "README.txt").read_text()
    with pytest.raises(FileExistsError, match="--out_dir"):
        script.write_random_base_vlm(out, "tiny")
    assert not list(tmp_path.glob("*.tmp-*"))  # written through a temp dir, nothing left behind


@pytest.mark.slow
@pytest.mark.sim
def test_gpu_check_script_small_mode(tmp_path):
    """The GPU check's whole chain (bench, data, torchrun fine-tune with CRaFT, evaluator, summary) at the tiny
    preset on CPU with osmesa; --dry prints the real-size commands without running them."""
    dry = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry", "--out", str(tmp_path / "dry")], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "--model_preset vla-adapter-pro --vlm_path" in dry.stdout and "MUJOCO_GL=egl" in dry.stdout
    assert "--precisions bf16 --device cuda" in dry.stdout and "--max_steps 20" in dry.stdout
    assert not (tmp_path / "dry").exists()
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--small", "--out", str(tmp_path / "small")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (tmp_path / "small" / "summary.txt").read_text()
    assert "bench [fp32]" in summary and "evaluation:" in summary and "lambda" in summary.split("fine-tune:")[1]
    assert summary.strip().splitlines()[-1].startswith("tiny-size step: baseline")
    assert (tmp_path / "small" / "runs" / "gpu-check--2_chkpt").is_dir()
