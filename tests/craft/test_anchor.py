"""θ0 anchor on a stand-in VLA: LoRA-disabled mode, snapshot fallback, full fine-tuning, resume, cache."""

import copy
import logging

import pytest
import torch

from prismatic.training.craft.anchor import AnchorModel, lora_b_is_zero, unwrap_model
from prismatic.training.craft.features import pool_features
from tests.craft.standin import features, lora_wrap, make_batch, make_model, train_steps

LAYER = 2


def _reference(model, batch):
    """Pooled Φ of `model` (eval mode, no grad) — what the anchor must reproduce for θ0."""
    raw, aq = features(model, batch, LAYER)
    return pool_features(raw, aq, "mean")


def _assert_same(a, b):
    assert torch.equal(a.raw, b.raw) and torch.equal(a.aq, b.aq)


def _assert_differs(a, b):
    assert not torch.allclose(a.raw, b.raw) or not torch.allclose(a.aq, b.aq)


# ---------------------------------------------------------------------------------------------------
# LoRA: adapters disabled + snapshot of the fully trained queries
# ---------------------------------------------------------------------------------------------------
def test_lora_anchor_equals_the_initial_model_after_training():
    batch = make_batch()
    model = lora_wrap(make_model(seed=0))
    anchor = AnchorModel.from_initial_state(model, layer_idx=LAYER)
    assert anchor.mode == "disable_adapters"
    # Only the fully trained module inside the VLM is copied: not LoRA, not the head / proprio projector.
    assert set(anchor.snapshot) == {"action_queries.weight"}
    train_steps(model, batch)
    base = model.get_base_model()
    assert any(bool((p.detach() != 0).any()) for n, p in base.named_parameters() if "lora_B" in n)  # adapters trained
    fresh = make_model(seed=0)  # same initial weights, never trained
    _assert_same(anchor.anchor_features(model, batch), _reference(fresh, batch))
    _assert_differs(_reference(model, batch), _reference(fresh, batch))  # the live model did move


def test_anchor_forward_leaves_the_model_as_it_was():
    batch = make_batch()
    model = lora_wrap(make_model())
    anchor = AnchorModel.from_initial_state(model, layer_idx=LAYER)
    train_steps(model, batch, steps=2)
    before = _reference(model, batch)
    model.train()
    model.get_base_model().language_model.layers[0].eval()  # a deliberately frozen-in-eval sub-module
    modes = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    values = {n: p.detach().clone() for n, p in model.named_parameters()}
    anchor.anchor_features(model, batch)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert all(torch.equal(p, values[n]) for n, p in model.named_parameters())
    _assert_same(_reference(model, batch), before)  # adapters are active again


def test_anchor_forward_runs_in_eval_mode_and_restores_modes_on_error():
    batch = make_batch()
    model = make_model()
    anchor = AnchorModel.from_initial_state(model, layer_idx=LAYER)
    model.train()
    a1, a2 = anchor.anchor_features(model, batch), anchor.anchor_features(model, batch)
    _assert_same(a1, a2)  # dropout off: deterministic target
    bad = dict(batch, pixel_values=batch["pixel_values"][:, :-1])  # wrong shape -> the forward raises
    with pytest.raises(RuntimeError):
        anchor.anchor_features(model, bad)
    assert all(m.training for m in model.modules())


def test_anchor_has_no_autograd_graph_and_gradients_of_the_current_forward_are_intact():
    batch = make_batch()
    model = lora_wrap(make_model())
    anchor = AnchorModel.from_initial_state(model, layer_idx=LAYER)
    out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["proprio"],
                actions=batch["actions"], output_craft_features=True, craft_layer_idx=LAYER)
    ref = anchor.anchor_features(model, batch)  # the trainer computes the anchor between forward and backward
    assert not ref.raw.requires_grad and not ref.aq.requires_grad
    cur = pool_features(out.raw_latent_features, out.action_query_features, "mean")
    ((cur.raw - ref.raw).pow(2).mean() + (cur.aq - ref.aq).pow(2).mean() + out.loss).backward()
    lora_a = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert lora_a and all(p.grad is not None for p in lora_a)
    assert model.get_base_model().action_queries.weight.grad is not None


# ---------------------------------------------------------------------------------------------------
# snapshot mode: non-zero LoRA B, full fine-tuning
# ---------------------------------------------------------------------------------------------------
def test_nonzero_lora_b_falls_back_to_a_snapshot_with_a_warning(caplog):
    batch = make_batch()
    model = lora_wrap(make_model(), init_lora_weights=False)  # peft: random B, adapters are NOT the identity
    assert not lora_b_is_zero(model.get_base_model())[0]
    initial = copy.deepcopy(model)
    with caplog.at_level(logging.WARNING, logger="prismatic.training.craft.anchor"):
        anchor = AnchorModel.from_initial_state(model, layer_idx=LAYER)
    assert anchor.mode == "snapshot"
    assert "not zero" in caplog.text and "snapshot" in caplog.text
    assert any("lora_B" in n for n in anchor.snapshot) and "action_queries.weight" in anchor.snapshot
    assert not any(n.startswith(("action_head.", "proprio_projector.")) for n in anchor.snapshot)
    train_steps(model, batch)
    _assert_same(anchor.anchor_features(model, batch), _reference(initial, batch))
    _assert_differs(_reference(model, batch), _reference(initial, batch))


def test_full_finetuning_snapshot_covers_trainables_that_influence_phi_only():
    batch = make_batch()
    model = make_model(seed=3)
    model.vision_backbone.requires_grad_(False)  # frozen: nothing changes it, so it is not copied
    anchor = AnchorModel.from_initial_state(model, layer_idx=LAYER)
    assert anchor.mode == "snapshot"
    names = set(anchor.snapshot)
    assert "action_queries.weight" in names and "language_model.layers.0.fc1.weight" in names
    assert not any(n.startswith(("vision_backbone.", "action_head.", "proprio_projector.")) for n in names)
    assert anchor.snapshot_nbytes == sum(t.numel() * 4 for t in anchor.snapshot.values())
    train_steps(model, batch)
    _assert_same(anchor.anchor_features(model, batch), _reference(make_model(seed=3), batch))


def test_unwraps_data_parallel_wrappers():
    batch = make_batch()
    model = make_model()
    anchor = AnchorModel.from_initial_state(torch.nn.DataParallel(model), layer_idx=LAYER)
    assert unwrap_model(torch.nn.DataParallel(model)) is model
    train_steps(model, batch, steps=2)
    _assert_same(anchor.anchor_features(torch.nn.DataParallel(model), batch), _reference(make_model(), batch))


def test_wrong_model_kind_is_an_error():
    model = lora_wrap(make_model())
    anchor = AnchorModel.from_initial_state(model, layer_idx=LAYER)
    with pytest.raises(TypeError, match="peft"):
        anchor.anchor_features(model.get_base_model(), make_batch())


# ---------------------------------------------------------------------------------------------------
# checkpointing: the saved θ0 comes back, the loaded weights are never snapshotted
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_lora", [True, False])
def test_state_dict_round_trip_and_resume_does_not_resnapshot(tmp_path, use_lora):
    batch = make_batch()
    model = lora_wrap(make_model(seed=1)) if use_lora else make_model(seed=1)
    anchor = AnchorModel.from_initial_state(model, layer_idx=LAYER)
    theta0 = anchor.anchor_features(model, batch)
    train_steps(model, batch)
    torch.save({"anchor": anchor.state_dict(), "model": model.state_dict()}, tmp_path / "training_state.pt")

    # "Resume": rebuild the model the same way, load the trained weights, restore the anchor.
    state = torch.load(tmp_path / "training_state.pt", weights_only=True)
    resumed = lora_wrap(make_model(seed=7)) if use_lora else make_model(seed=7)
    resumed.load_state_dict(state["model"])
    restored = AnchorModel.from_state_dict(resumed, state["anchor"], layer_idx=LAYER)
    assert restored.mode == anchor.mode
    _assert_same(restored.anchor_features(resumed, batch), theta0)
    # What a re-snapshot would give instead (the trained weights) — the test above would catch it.
    _assert_differs(AnchorModel.from_initial_state(resumed, layer_idx=LAYER).anchor_features(resumed, batch), theta0)

    # In-place load into an anchor of the same mode.
    other = AnchorModel.from_initial_state(make_model(seed=9) if not use_lora else lora_wrap(make_model(seed=9)),
                                           layer_idx=LAYER)
    other.load_state_dict(state["anchor"])
    assert all(torch.equal(other.snapshot[n], restored.snapshot[n]) for n in restored.snapshot)


def test_state_dict_mismatches_are_errors():
    model = make_model()
    state = AnchorModel.from_initial_state(model, layer_idx=LAYER).state_dict()
    missing = dict(state, snapshot={k: v for k, v in state["snapshot"].items() if k != "action_queries.weight"})
    with pytest.raises(ValueError, match="missing \\['action_queries.weight'\\]"):
        AnchorModel.from_state_dict(model, missing, layer_idx=LAYER)
    wrong = dict(state, snapshot=dict(state["snapshot"], **{"action_queries.weight": torch.zeros(2, 2)}))
    with pytest.raises(ValueError, match="mismatched"):
        AnchorModel.from_state_dict(model, wrong, layer_idx=LAYER)
    with pytest.raises(ValueError, match="not a peft model"):
        AnchorModel.from_state_dict(model, dict(state, mode="disable_adapters"), layer_idx=LAYER)
    with pytest.raises(ValueError, match="version"):
        AnchorModel.from_state_dict(model, dict(state, format_version=99), layer_idx=LAYER)
    lora_anchor = AnchorModel.from_initial_state(lora_wrap(make_model()), layer_idx=LAYER)
    with pytest.raises(ValueError, match="mode"):
        lora_anchor.load_state_dict(state)


# ---------------------------------------------------------------------------------------------------
# per-sample anchor cache
# ---------------------------------------------------------------------------------------------------
def test_anchor_cache_computes_each_sample_once_and_matches_the_uncached_features():
    model = make_model()
    base = model
    anchor = AnchorModel.from_initial_state(model, layer_idx=LAYER, use_cache=True)
    plain = AnchorModel.from_initial_state(model, layer_idx=LAYER)
    batch = make_batch(batch_size=4, seed=0)
    keys = ["ep0/0", "ep0/1", "ep1/0", "ep1/1"]
    base.forward_rows = 0
    first = anchor.anchor_features(model, batch, sample_keys=keys)
    assert base.forward_rows == 4 and len(anchor.cache) == 4
    again = anchor.anchor_features(model, batch, sample_keys=keys)
    assert base.forward_rows == 4  # served from the cache
    expected = plain.anchor_features(model, batch)
    assert torch.allclose(first.raw, expected.raw) and torch.allclose(again.aq, expected.aq)

    # A batch with two known and two new samples: only the two new rows are computed.
    batch2 = make_batch(batch_size=4, seed=1)
    for k in ("input_ids", "attention_mask", "pixel_values", "proprio"):
        batch2[k][:2] = batch[k][1:3]
    keys2 = ["ep0/1", "ep1/0", "ep2/0", "ep2/1"]
    base.forward_rows = 0
    mixed = anchor.anchor_features(model, batch2, sample_keys=keys2)
    assert base.forward_rows == 2 and len(anchor.cache) == 6
    expected2 = plain.anchor_features(model, batch2)
    assert torch.allclose(mixed.raw, expected2.raw, atol=1e-6) and torch.allclose(mixed.aq, expected2.aq, atol=1e-6)


def test_anchor_cache_input_errors():
    model = make_model()
    anchor = AnchorModel.from_initial_state(model, layer_idx=LAYER, use_cache=True)
    batch = make_batch(batch_size=2)
    with pytest.raises(ValueError, match="sample keys"):
        anchor.anchor_features(model, batch)
    with pytest.raises(ValueError, match="2 sample keys|got 1"):
        anchor.anchor_features(model, batch, sample_keys=["a"])
    with pytest.raises(ValueError, match="duplicate"):
        anchor.anchor_features(model, batch, sample_keys=["a", "a"])


def test_snapshot_from_meta_parameters_is_an_error():
    with torch.device("meta"):
        model = make_model()
    with pytest.raises(ValueError, match="meta"):
        AnchorModel.from_initial_state(model, layer_idx=LAYER)


def test_constructor_validation():
    with pytest.raises(ValueError, match="pooling"):
        AnchorModel("snapshot", {}, LAYER, pooling="sum")
    with pytest.raises(ValueError, match="layer index"):
        AnchorModel("snapshot", {}, None)
    with pytest.raises(ValueError, match="anchor mode"):
        AnchorModel("copy", {}, LAYER)


def test_resume_refuses_different_frozen_base_weights():
    """θ0 in LoRA mode is the frozen base reloaded from --vlm_path: a different base must be refused on resume,
    with the flag named; the same base (rebuilt from scratch) is accepted."""
    batch = make_batch()
    model = lora_wrap(make_model(seed=1))
    anchor = AnchorModel.from_initial_state(model, layer_idx=LAYER)
    assert anchor.fingerprint and all(not n.startswith("action_head.") for n in anchor.fingerprint)
    train_steps(model, batch)
    state = anchor.state_dict()
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def resumed(base_seed):
        m = lora_wrap(make_model(seed=base_seed))  # the base "reloaded from --vlm_path"
        with torch.no_grad():
            for n, p in m.named_parameters():
                if p.requires_grad:
                    p.copy_(trained[n])  # the checkpoint restores only the trainable tensors
        return m

    same = resumed(1)
    restored = AnchorModel.from_state_dict(same, state, layer_idx=LAYER)
    _assert_same(restored.anchor_features(same, batch), anchor.anchor_features(model, batch))
    with pytest.raises(ValueError, match="--vlm_path"):
        AnchorModel.from_state_dict(resumed(2), state, layer_idx=LAYER)
    # A checkpoint without a fingerprint (older format) still loads, with a warning.
    AnchorModel.from_state_dict(resumed(2), dict(state, base_fingerprint=None), layer_idx=LAYER)
