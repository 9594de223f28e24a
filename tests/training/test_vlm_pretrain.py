"""VLM pretraining (prismatic/training/vlm_pretrain.py, prismatic/models/vlm_lm.py): the scoring functions against
a plainly written reference, the loss falls, the written directory loads through load_base_vlm with the trained
weights, and finetune uses it through --vlm_path."""

import tempfile

import pytest
import torch

from prismatic.models.config import get_preset
from prismatic.models.loading import load_base_vlm
from prismatic.models.processing import build_tiny_tokenizer, load_tokenizer, pixel_values_from_images
from prismatic.models.vla import VLAAdapter
from prismatic.models.vlm_lm import (
    collate_pairs,
    encode_pair,
    image_patch_embeddings,
    mean_target_nll,
    single_image_pixels,
    target_log_probs,
)
from prismatic.training import vlm_pretrain as vp
from prismatic.vla.datasets import vqa

SIZE = get_preset("tiny").vision.image_size


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return vqa.write_vqa_dataset(tmp_path_factory.mktemp("vqa") / "data", num_train_scenes=40, num_heldout_scenes=8,
                                 image_size=SIZE, seed=1)


@pytest.fixture(scope="module")
def tokenizer():
    with tempfile.TemporaryDirectory() as d:
        return build_tiny_tokenizer(d, vocab_size=get_preset("tiny").llm.vocab_size)


def _model(seed=0):
    torch.manual_seed(seed)
    return VLAAdapter(get_preset("tiny"), attn_implementation="eager").eval()


def _reference_log_likelihood(model, tokenizer, image, prompt, target):
    """Summed log p(target | image, prompt), written out: the image through the backbone on its own (duplicated
    to fill the model's image slots, first copy's patches kept), the sequence assembled by hand, the full
    Qwen2ForCausalLM forward (logits at every position) and the shifted cross-entropy."""
    n, p = model.config.num_images_in_input, model.config.vision.patches_per_image
    pixels = pixel_values_from_images([image] * n, SIZE).unsqueeze(0)
    patches = model.projector(model.vision_backbone(pixels))[:, :p]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + target_ids])
    text = model.language_model.get_input_embeddings()(ids)
    embeds = torch.cat([text[:, :1], patches, text[:, 1:]], dim=1)
    logits = model.language_model(inputs_embeds=embeds).logits[0]  # (1 + p + L - 1, V)
    total = 0.0
    for j in range(len(prompt_ids), len(prompt_ids) + len(target_ids)):
        position = j + p  # where text token j sits; predicted by the position before it
        total += torch.log_softmax(logits[position - 1], dim=-1)[ids[0, j]].item()
    return total


def test_target_log_probs_match_reference(data_root, tokenizer):
    model = _model()
    samples = vqa.load_vqa_split(data_root, "heldout")[:7]  # an odd count: the image grouping pads the batch
    pairs = [(vqa.prompt_for(s), vqa.target_text(s.answer)) for s in samples[:6]]
    pairs.append((vqa.caption_prompt(), vqa.target_text(samples[6].caption)))
    with torch.no_grad():
        patches = image_patch_embeddings(model, single_image_pixels([s.image for s in samples], SIZE))
        batch = collate_pairs([encode_pair(tokenizer, *pair) for pair in pairs], int(tokenizer.pad_token_id))
        ours = target_log_probs(model, patches, batch).sum(dim=1)
        nll = mean_target_nll(model, patches, batch)
    reference = torch.tensor([_reference_log_likelihood(model, tokenizer, s.image, *pair)
                              for s, pair in zip(samples, pairs)])
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    counts = batch.target_mask.sum(dim=1)
    torch.testing.assert_close(nll, (-reference / counts).mean(), rtol=1e-4, atol=1e-4)


def test_evaluate_vqa_matches_reference_argmax(data_root, tokenizer):
    model = _model(seed=2)
    samples = vqa.load_vqa_split(data_root, "heldout")[:12]
    result = vp.evaluate_vqa(model, tokenizer, samples, SIZE, batch_size=5)
    correct = []
    for s in samples:
        scores = [_reference_log_likelihood(model, tokenizer, s.image, vqa.prompt_for(s), vqa.target_text(a))
                  for a in vqa.ANSWERS[s.question_type]]
        correct.append(vqa.ANSWERS[s.question_type][max(range(len(scores)), key=scores.__getitem__)] == s.answer)
    assert result["vqa_accuracy"] == pytest.approx(sum(correct) / len(correct))
    # scene 0 asks the seen question forms, scene 1 (compositional) names a held-out combination: scored apart
    for key, flag in (("seen_question_accuracy", False), ("heldout_question_accuracy", True)):
        part = [ok for ok, s in zip(correct, samples) if s.heldout_question == flag]
        assert part and result[key] == pytest.approx(sum(part) / len(part)), key
    assert result["chance_accuracy"] == pytest.approx(
        sum(1 / len(vqa.ANSWERS[s.question_type]) for s in samples) / len(samples))
    first = {s.scene_id: s for s in reversed(samples)}  # one caption per scene
    nll = [-_reference_log_likelihood(model, tokenizer, s.image, vqa.caption_prompt(), vqa.target_text(s.caption))
           / len(tokenizer(vqa.target_text(s.caption), add_special_tokens=False)["input_ids"])
           for s in first.values()]
    assert result["caption_nll"] == pytest.approx(sum(nll) / len(nll), rel=1e-4)
    assert result["num_scenes"] == len(first) and not model.training


@pytest.mark.slow
def test_few_steps_lower_the_loss(data_root, tokenizer):
    cfg = vp.PretrainConfig(out_dir="unused", max_steps=25, batch_size=16, warmup_steps=5, log_freq=5)
    model = _model()
    train = vqa.load_vqa_split(data_root, "train")
    fixed = train[:24]
    pairs = [encode_pair(tokenizer, vqa.prompt_for(s), vqa.target_text(s.answer)) for s in fixed]
    batch = collate_pairs(pairs, int(tokenizer.pad_token_id))

    def loss():
        with torch.no_grad():
            return float(mean_target_nll(model, image_patch_embeddings(
                model, single_image_pixels([s.image for s in fixed], SIZE)), batch))

    before = loss()
    head_before = {k: v.clone() for k, v in model.action_head.state_dict().items()}
    losses = vp.train_vlm(cfg, model, tokenizer, train, SIZE)
    after = loss()
    assert len(losses) == 25 and after < before - 1.0, (before, after)
    for k, v in model.action_head.state_dict().items():  # no action head in VLM pretraining
        assert torch.equal(v, head_before[k]), k


def test_written_dir_loads_with_the_trained_weights_and_is_reused(data_root, tmp_path):
    out = tmp_path / "tiny_vlm"
    overrides = dict(data_root=str(data_root), num_train_scenes=40, num_heldout_scenes=8, data_seed=1, max_steps=3,
                     batch_size=8, warmup_steps=1, num_train_eval_scenes=0)
    trained = {}
    original = vp.train_vlm

    def keep(cfg, model, *args):  # the in-memory weights at the end of training
        losses = original(cfg, model, *args)
        trained.update({k: v.detach().clone() for k, v in model.merged_vlm_state_dict().items()})
        return losses

    vp.train_vlm = keep
    try:
        assert vp.ensure_pretrained_tiny_vlm(out, **overrides) == out
    finally:
        vp.train_vlm = original
    config = get_preset("tiny")
    loaded = load_base_vlm(out, config, attn_implementation="sdpa")  # strict: every VLM key and shape
    state = loaded.merged_vlm_state_dict()
    for key, value in trained.items():
        if not key.startswith("action_queries"):
            assert torch.equal(state[key], value), key
    torch.manual_seed(0)
    fresh = VLAAdapter(config, attn_implementation="sdpa").merged_vlm_state_dict()
    assert not torch.equal(state["language_model.model.embed_tokens.weight"],
                           fresh["language_model.model.embed_tokens.weight"])  # trained, not the initial draw
    tokenizer = load_tokenizer(out)
    metrics = vp.read_pretrain_metrics(out)
    again = vp.evaluate_vqa(loaded.eval(), tokenizer, vqa.load_vqa_split(data_root, "heldout"), SIZE)
    assert again["vqa_accuracy"] == pytest.approx(metrics["heldout"]["vqa_accuracy"])
    assert again["caption_nll"] == pytest.approx(metrics["heldout"]["caption_nll"], rel=1e-5)
    assert 0 < metrics["heldout"]["chance_accuracy"] < 1 and metrics["steps"] == 3
    stamp = next((out / "checkpoints").iterdir()).stat().st_mtime_ns
    vp.ensure_pretrained_tiny_vlm(out, **overrides)  # same settings: reused
    assert next((out / "checkpoints").iterdir()).stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("*.tmp-*"))
    with pytest.raises(FileExistsError, match="--out_dir"):
        vp.pretrain(vp.PretrainConfig(out_dir=str(out), **overrides))


@pytest.mark.slow
def test_finetune_loads_the_pretrained_vlm_through_vlm_path(data_root, synthetic_data_root, tmp_path):
    from prismatic.training import checkpoint as ckpt
    from prismatic.training.config import FinetuneConfig
    from prismatic.training.train import train

    out = vp.ensure_pretrained_tiny_vlm(tmp_path / "vlm", data_root=str(data_root), num_train_scenes=40,
                                        num_heldout_scenes=8, data_seed=1, max_steps=2, batch_size=4,
                                        warmup_steps=1, num_train_eval_scenes=0)
    base = load_base_vlm(out, get_preset("tiny"), attn_implementation="sdpa").merged_vlm_state_dict()
    cfg = FinetuneConfig(model_preset="tiny", vlm_path=str(out), dataset_name="libero_synthetic",
                         data_root_dir=str(synthetic_data_root), run_root_dir=str(tmp_path / "runs"), device="cpu",
                         batch_size=2, max_steps=1, save_freq=1, shuffle_buffer_size=16, lora_rank=2,
                         wandb_mode="disabled", wandb_log_freq=1, seed=3)
    result = train(cfg)
    loaded = ckpt.load_checkpoint(result.last_checkpoint, need_lora=False, need_merged=True)
    # LoRA leaves embeddings and norms frozen: the fine-tuned model's copies are the pretrained ones.
    for key in ("language_model.model.embed_tokens.weight", "language_model.model.norm.weight",
                "vision_backbone.featurizer.pos_embed"):
        assert torch.equal(loaded.merged_vlm[key].float(), base[key]), key


def test_llm_reinitialisation_touches_only_the_llm_matrices():
    default, _, _ = vp.build_model_and_tokenizer("tiny", seed=4)
    redrawn, _, _ = vp.build_model_and_tokenizer("tiny", seed=4, llm_init_std=0.08)
    a, b = default.state_dict(), redrawn.state_dict()
    for key in a:
        matrix = key.startswith("language_model.") and a[key].ndim == 2
        assert torch.equal(a[key], b[key]) != matrix, key  # exactly the LLM's matrices changed
    embed = b["language_model.model.embed_tokens.weight"]
    assert abs(float(embed.std()) - 0.08) < 0.005 and torch.equal(embed, b["language_model.lm_head.weight"])


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="--max_steps"):
        vp.PretrainConfig(max_steps=0)
    with pytest.raises(ValueError, match="--model_preset"):
        vp.PretrainConfig(model_preset="vla-adapter")
    with pytest.raises(ValueError, match="--llm_init_std"):
        vp.PretrainConfig(llm_init_std=-1.0)
    with pytest.raises(ValueError, match="--num_train_eval_scenes"):
        vp.PretrainConfig(num_train_scenes=10, num_train_eval_scenes=20)
