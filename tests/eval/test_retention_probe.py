"""The retention probe: its arithmetic against plain references, the model paths, and the finetune flags."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from prismatic.eval.retention_probe import (
    PROBE_WANDB_KEYS,
    RetentionProbe,
    fit_linear_probe,
    linear_cka,
    probe_accuracy,
)

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------------
# linear CKA
# ---------------------------------------------------------------------------------------------------------
def _cka_reference(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC form with n x n Gram matrices and the centring matrix H (the (p, q) form is what the code uses)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    hsic = np.trace(k @ h @ l_ @ h)
    return float(hsic / math.sqrt(np.trace(k @ h @ k @ h) * np.trace(l_ @ h @ l_ @ h)))


def test_cka_by_hand():
    # 1-D features: CKA = squared Pearson correlation. x - mean = (-1, 0, 1), y - mean = (0, -1, 1):
    # (x.y)^2 / (|x|^2 |y|^2) = 1 / (2 * 2) = 0.25.
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [0.0], [2.0]])
    assert linear_cka(x, y) == pytest.approx(0.25, abs=1e-12)


def test_cka_identity_rotation_scaling_and_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert linear_cka(x, (x.double() @ q) * 3.7) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, x + 5.0) == pytest.approx(1.0, abs=1e-10)  # column means are removed
    y = torch.randn(40, 9, generator=g)  # another width
    assert linear_cka(x, y) == pytest.approx(_cka_reference(x.double().numpy(), y.double().numpy()), abs=1e-10)
    mixed = x @ torch.randn(6, 6, generator=g) + 0.5 * torch.randn(40, 6, generator=g)
    value = linear_cka(x, mixed)
    assert 0.0 < value < 1.0
    assert value == pytest.approx(_cka_reference(x.double().numpy(), mixed.double().numpy()), abs=1e-10)


def test_cka_rejects_bad_input():
    with pytest.raises(ValueError, match="same inputs"):
        linear_cka(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="constant"):
        linear_cka(torch.ones(5, 2), torch.randn(5, 2))
    with pytest.raises(ValueError, match="non-finite"):
        linear_cka(torch.tensor([[1.0], [float("nan")]]), torch.randn(2, 1))
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(torch.randn(5), torch.randn(5))


# ---------------------------------------------------------------------------------------------------------
# linear probe
# ---------------------------------------------------------------------------------------------------------
def test_probe_separable_by_hand():
    # Class = which of two clusters, far apart on feature 0; feature 1 is noise and feature 2 is constant.
    x = torch.tensor([[-5.0, 0.3, 1.0], [-4.0, -0.2, 1.0], [-6.0, 0.1, 1.0], [4.0, 0.2, 1.0], [5.0, -0.1, 1.0],
                      [6.0, 0.0, 1.0]])
    y = torch.tensor([3, 3, 3, 7, 7, 7])  # arbitrary label values come back as themselves
    probe = fit_linear_probe(x, y, l2=1e-3)
    assert probe.predict(torch.tensor([[-4.5, 0.0, 1.0], [5.5, 0.0, 1.0]])).tolist() == [3, 7]
    assert probe_accuracy(probe, x, y) == 1.0
    # A label never seen in training is always wrong; half right here.
    assert probe_accuracy(probe, torch.tensor([[-5.0, 0.0, 1.0], [5.0, 0.0, 1.0]]), torch.tensor([3, 9])) == 0.5


def test_probe_weights_match_lstsq_reference():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1, 3.0], dtype=torch.float64)
    y = torch.randint(0, 3, (50,), generator=g)
    l2 = 0.05
    probe = fit_linear_probe(x, y, l2=l2)
    # Reference: the same ridge problem as an augmented least-squares system, in numpy.
    xn = x.numpy()
    z = (xn - xn.mean(0)) / xn.std(0)
    a = np.hstack([z, np.ones((50, 1))])
    targets = np.eye(3)[y.numpy()]
    penalty = np.sqrt(l2 * 50) * np.eye(5)[:4]  # no penalty row for the bias
    w_ref = np.linalg.lstsq(np.vstack([a, penalty]), np.vstack([targets, np.zeros((4, 3))]), rcond=None)[0]
    assert np.allclose(probe.weight.numpy(), w_ref, atol=1e-10)
    expected = (np.argmax(a @ w_ref, axis=1) == y.numpy()).mean()
    assert probe_accuracy(probe, x, y) == pytest.approx(expected)


def test_probe_rejects_bad_input():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_linear_probe(x, torch.tensor([1, 1, 1, 1]))
    with pytest.raises(ValueError, match="integer class labels"):
        fit_linear_probe(x, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="4 labels"):
        fit_linear_probe(x, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="l2"):
        fit_linear_probe(x, torch.tensor([0, 1, 0, 1]), l2=0.0)
    probe = fit_linear_probe(x, torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="fitted on 2 features"):
        probe.predict(torch.randn(3, 5))


# ---------------------------------------------------------------------------------------------------------
# the model paths, on a tiny random model
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from prismatic.models.config import get_preset
    from prismatic.models.processing import build_tiny_tokenizer
    from prismatic.models.vla import VLAAdapter
    from prismatic.vla.datasets.vqa import write_vqa_dataset

    root = tmp_path_factory.mktemp("probe")
    config = get_preset("tiny")
    data = write_vqa_dataset(root / "vqa", num_train_scenes=24, num_heldout_scenes=8,
                             image_size=config.vision.image_size, seed=3)
    tokenizer = build_tiny_tokenizer(root / "tokenizer", vocab_size=config.llm.vocab_size)
    torch.manual_seed(0)
    return VLAAdapter(config, attn_implementation="sdpa").eval(), tokenizer, config, data


def test_language_path_matches_full_logits(tiny):
    """The probe's LM scoring (shared with the pretraining, prismatic.models.vlm_lm) against the whole LM's
    logits at every position, one unpadded row at a time."""
    from prismatic.models.vlm_lm import TextBatch, collate_pairs, target_log_probs

    model, _, config, _ = tiny
    g = torch.Generator().manual_seed(5)
    patches = torch.randn(2, config.vision.patches_per_image, config.llm.hidden_size, generator=g)
    prompts, completions = [[1, 40, 41, 42], [1, 50]], [[7, 8], [9, 10, 11]]
    batch = collate_pairs([(a + c, len(a)) for a, c in zip(prompts, completions)], pad_token_id=0)
    with torch.no_grad():
        ours = target_log_probs(model, patches, TextBatch(batch.input_ids, batch.attention_mask, batch.target_mask))
        for i in range(2):
            ids = torch.tensor(prompts[i] + completions[i])
            text = model.language_model.model.embed_tokens(ids)
            embeds = torch.cat([text[:1], patches[i], text[1:]]).unsqueeze(0)
            logp = torch.log_softmax(model.language_model(inputs_embeds=embeds).logits[0].float(), dim=-1)
            p, n = patches.shape[1], len(prompts[i])
            expected = torch.stack([logp[p + n + j - 1, t] for j, t in enumerate(completions[i])])
            torch.testing.assert_close(ours[i, n: n + len(completions[i])], expected, rtol=1e-4, atol=1e-5)


def test_probe_runs_on_a_tiny_model(tiny):
    model, tokenizer, config, data = tiny
    probe = RetentionProbe(data, tokenizer, config, batch_size=7)
    model.train()  # the probe must switch to eval and restore this
    probe.capture_reference(model)
    result = probe.run(model)
    assert model.training and all(m.training for m in model.modules())
    m = result.metrics()
    assert set(m) == set(PROBE_WANDB_KEYS)
    assert 0.0 <= m["probe_vqa_accuracy"] <= 1.0 and 0.0 <= m["probe_linear_accuracy"] <= 1.0
    assert m["probe_cka"] == pytest.approx(1.0, abs=1e-9)  # nothing changed since θ0
    # A random 512-token LM: about ln(512) nats per caption token.
    assert 0.5 * math.log(512) < m["probe_caption_nll"] < 2 * math.log(512)
    assert set(result.vqa_accuracy_by_type) == {"colour", "shape", "count", "left_right", "nearer_gripper",
                                                "instruction"}
    assert 0.0 < result.vqa_chance < 1.0
    # The batch size changes nothing but rounding.
    other = RetentionProbe(data, tokenizer, config, batch_size=32)
    other.capture_reference(model)
    again = other.run(model)
    assert again.vqa_accuracy == result.vqa_accuracy
    assert again.caption_nll == pytest.approx(result.caption_nll, rel=1e-5)
    assert again.linear_probe_accuracy == result.linear_probe_accuracy
    # A changed model: CKA < 1 against the old reference.
    with torch.no_grad():
        changed = type(model)(config, attn_implementation="sdpa").eval()
        changed.load_state_dict(model.state_dict())
        changed.language_model.model.layers[0].mlp.down_proj.weight.mul_(-3.0)
    assert probe.run(changed).cka < 0.999


def test_features_are_the_vla_craft_features(tiny):
    """Pooled C_R / C_AQ of the probe = the VLA forward on what the policy processor makes of (scene image in
    both slots, PROBE_INSTRUCTION), pooled as CRaFT pools."""
    from prismatic.eval.retention_probe import PROBE_INSTRUCTION
    from prismatic.models.processing import VLAProcessor

    model, tokenizer, config, data = tiny
    probe = RetentionProbe(data, tokenizer, config, batch_size=3, pooling="max", layer_idx=1)
    images = probe.data.heldout_images[:4]
    ours = probe.features(model, images)
    processor = VLAProcessor(tokenizer, config.vision.image_size, 2, config.num_action_queries)
    samples = [processor([im, im], PROBE_INSTRUCTION) for im in images]
    ids, mask = processor.collate_text([s["input_ids"] for s in samples])
    with torch.no_grad():
        out = model(ids, mask, torch.stack([s["pixel_values"] for s in samples]), output_craft_features=True,
                    craft_layer_idx=1, compute_actions=False)
    torch.testing.assert_close(ours["raw"], out.raw_latent_features.amax(dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["aq"], out.action_query_features.amax(dim=1), rtol=1e-5, atol=1e-6)


def test_probe_data_errors(tiny, tmp_path):
    _, tokenizer, config, data = tiny
    from prismatic.models.config import get_preset

    with pytest.raises(FileNotFoundError, match="no VQA dataset"):
        RetentionProbe(tmp_path, tokenizer, config)
    with pytest.raises(ValueError, match="image_size=112"):
        RetentionProbe(data, tokenizer, get_preset("mid"))
    with pytest.raises(ValueError, match="layer_idx"):
        RetentionProbe(data, tokenizer, config, layer_idx=99)


# ---------------------------------------------------------------------------------------------------------
# finetune flags, in-training probe, the script
# ---------------------------------------------------------------------------------------------------------
def _cfg(data_root, run_root, **kw):
    from prismatic.training.config import FinetuneConfig

    base = dict(model_preset="tiny", dataset_name="libero_synthetic", data_root_dir=str(data_root),
                run_root_dir=str(run_root), device="cpu", batch_size=2, max_steps=2, save_freq=2,
                shuffle_buffer_size=16, lora_rank=4, wandb_mode="disabled", wandb_log_freq=10, seed=3)
    base.update(kw)
    return FinetuneConfig(**base)


def test_probe_flags_are_validated(tmp_path, tiny):
    data = tiny[3]
    with pytest.raises(ValueError, match="--probe_freq must be >= 0"):
        _cfg(tmp_path, tmp_path, probe_freq=-1)
    with pytest.raises(ValueError, match="--probe_freq 2 needs --probe_data"):
        _cfg(tmp_path, tmp_path, probe_freq=2)
    with pytest.raises(ValueError, match="--probe_data .*not a VQA"):
        _cfg(tmp_path, tmp_path, probe_freq=2, probe_data=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="--probe_batch_size"):
        _cfg(tmp_path, tmp_path, probe_freq=2, probe_data=str(data), probe_batch_size=0)
    _cfg(tmp_path, tmp_path, probe_freq=2, probe_data=str(data))  # valid
    _cfg(tmp_path, tmp_path, probe_data=str(tmp_path / "nowhere"))  # probe off: the path is not read


def _load_script(relative: str):
    spec = importlib.util.spec_from_file_location("probe_script_" + Path(relative).stem, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_finetune_logs_probe_and_trains_the_same(synthetic_data_root, tmp_path, tiny, capsys):
    from prismatic.training.metrics import read_metrics
    from prismatic.training.train import train

    data = tiny[3]
    with_probe = train(_cfg(synthetic_data_root, tmp_path / "probe", probe_freq=1, probe_data=str(data),
                            probe_batch_size=8))
    without = train(_cfg(synthetic_data_root, tmp_path / "plain"))
    rows, plain = read_metrics(with_probe.run_dir), read_metrics(without.run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert set(PROBE_WANDB_KEYS) <= set(row)
        assert all(math.isfinite(row[k]) for k in PROBE_WANDB_KEYS)
        assert 0.0 <= row["probe_cka"] <= 1.0 + 1e-9
    # The probe changes nothing in training (same losses, step by step).
    assert [r["loss"] for r in rows] == [r["loss"] for r in plain]
    # The script on the final (merged) checkpoint reproduces the last logged probe numbers.
    script = _load_script("vla-scripts/retention_probe.py")
    out = tmp_path / "probe.json"
    assert script.main(["--checkpoint", str(with_probe.last_checkpoint), "--probe_data", str(data), "--device", "cpu",
                        "--batch_size", "5", "--output_json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["vqa_accuracy"] == rows[-1]["probe_vqa_accuracy"]
    assert saved["linear_probe_accuracy"] == pytest.approx(rows[-1]["probe_linear_accuracy"], abs=1e-9)
    assert saved["caption_nll"] == pytest.approx(rows[-1]["probe_caption_nll"], rel=1e-4)
    assert saved["cka"] == pytest.approx(rows[-1]["probe_cka"], abs=1e-4)
    assert "VQA accuracy (held-out)" in capsys.readouterr().out
    # Probe flags may change on resume (they are not in the resume must-match lists).
    resumed = train(_cfg(synthetic_data_root, tmp_path / "probe", probe_freq=0, max_steps=3, resume=True))
    assert resumed.final_step == 3


def test_tiny_preset_with_vlm_path_loads_the_base_vlm(tiny, tmp_path):
    """--model_preset tiny --vlm_path DIR: the run starts from that base VLM (what the benchmark's pretrained
    tiny VLM relies on), its tokenizer included; without --vlm_path tiny stays random-initialised."""
    from prismatic.models.native_vlm import write_native_base_vlm
    from prismatic.training.train import build_model, build_tokenizer, model_config_for, resolve_sources

    model, tokenizer, _, data = tiny
    vlm_dir = write_native_base_vlm(tmp_path / "vlm", model, tokenizer)
    cfg = _cfg(tmp_path, tmp_path, vlm_path=str(vlm_dir), use_lora=False)
    sources = resolve_sources(cfg)
    assert sources.vlm_dir == vlm_dir
    assert len(build_tokenizer(cfg, model_config_for(cfg), sources)) == len(tokenizer)
    built = build_model(cfg, model_config_for(cfg), torch.device("cpu"), sources)
    base = model.merged_vlm_state_dict()
    for key, value in built.merged_vlm_state_dict().items():
        if not key.startswith("action_queries"):  # queries / head stay seeded random, as for real presets
            assert torch.equal(value, base[key]), key
    assert resolve_sources(_cfg(tmp_path, tmp_path)).vlm_dir is None


# ---------------------------------------------------------------------------------------------------------
# table drivers: the last probe values beside the success rate
# ---------------------------------------------------------------------------------------------------------
def test_collect_writes_the_probe_table_only_when_runs_logged_it(tmp_path):
    from craft_experiments.common_utils.collect import collect_table
    from craft_experiments.common_utils.experiment_plan import BASELINE, CRAFT, PlannedRun, Row, TableSpec

    rows = (Row("baseline", "VLA-Adapter", BASELINE), Row("craft", "VLA-Adapter + CRaFT", CRAFT))
    spec = TableSpec("table1", "Table 1", lambda settings: rows)
    runs = [PlannedRun("table1", row, "libero_spatial", 7, "libero_spatial_no_noops", 4, tmp_path / "runs" / row.name)
            for row in rows]
    for run, rate in zip(runs, (0.5, 0.75)):
        (run.train_root / run.row.name).mkdir(parents=True)
        (run.run_dir / "RESULT.json").write_text(json.dumps({"success_rate": rate}))
        metrics = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
        (run.train_root / run.row.name / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    out = tmp_path / "out"
    collect_table(spec, rows, runs, ("libero_spatial",), out, plots=False)
    assert not (out / "tables" / "table1.probe.md").exists()  # no run logged the probe: no table

    # The craft run logged the probe at steps 1 and 2 (without CKA): its LAST values, and only the logged columns.
    probe_rows = [{"step": 1, "loss": 1.0, "probe_vqa_accuracy": 0.9, "probe_caption_nll": 0.2,
                   "probe_linear_accuracy": 0.8},
                  {"step": 2, "loss": 0.5, "probe_vqa_accuracy": 0.7, "probe_caption_nll": 0.4,
                   "probe_linear_accuracy": 0.6}]
    (runs[1].train_root / "craft" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in probe_rows))
    collect_table(spec, rows, runs, ("libero_spatial",), out, plots=False)
    md = (out / "tables" / "table1.probe.md").read_text()
    assert "| method | suite | seed | success rate (%) | Probe/VQA Accuracy | Probe/Caption NLL | " \
           "Probe/Linear Probe Accuracy |" in md
    assert "CKA" not in md.split("\n")[0]
    assert "| VLA-Adapter + CRaFT | libero_spatial | 7 | 75.0 | 0.7000 | 0.4000 | 0.6000 |" in md
    assert "| VLA-Adapter |" not in md  # the baseline logged no probe
    csv_text = (out / "tables" / "table1.probe.csv").read_text().splitlines()
    assert csv_text[1] == "VLA-Adapter + CRaFT,libero_spatial,7,75.0,0.7000,0.4000,0.6000"


def test_log_parser_adds_probe_columns_for_runs_that_logged_them(tmp_path):
    from craft_experiments.common_utils.log_parser import DEFAULT_METRICS, main

    plain, probed = tmp_path / "plain", tmp_path / "probed"
    for run, extra in ((plain, {}), (probed, {"probe_vqa_accuracy": 0.625, "probe_cka": 0.5})):
        run.mkdir()
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.25, **extra}) + "\n")
    out = tmp_path / "plain.md"
    assert main(["--wandb", str(plain), "--output", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "| Run | " + " | ".join(DEFAULT_METRICS.split(",")) + " |"
    assert main(["--wandb", str(plain), "--wandb", str(probed), "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].endswith("| Probe/VQA Accuracy | Probe/CKA to θ0 |")
    assert lines[2].endswith("| n/a | n/a |") and lines[3].endswith("| 0.625 | 0.5 |")
    assert main(["--wandb", str(probed), "--metrics", "VLA Train/Loss", "--output", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "| Run | VLA Train/Loss |"  # explicit --metrics: as given
