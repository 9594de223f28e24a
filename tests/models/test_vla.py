"""The whole model at tiny size: shapes, token layout and slicing, CRaFT features, predict_action."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from prismatic.models.llm import hidden_states_of
from prismatic.models.loading import load_vla_checkpoint, save_released_checkpoint
from prismatic.models.vla import VLAAdapter
from prismatic.vla.normalization import normalize_bounds_q99, unnormalize_bounds_q99

LENGTHS = [30, 24, 27]  # different prompt lengths in one right-padded batch


@pytest.fixture(params=[False, True], ids=["original", "pro"])
def model(request, tiny_config):
    torch.manual_seed(0)
    return VLAAdapter(tiny_config(use_pro_version=request.param, train_noise_std=0.0), attn_implementation="sdpa")


def test_shapes_and_losses(model, make_batch):
    cfg = model.config
    batch = make_batch(cfg, LENGTHS)
    out = model(**batch)
    b = len(LENGTHS)
    assert out.predicted_actions.shape == (b, cfg.num_actions_chunk, cfg.action_dim)
    pred, target = out.predicted_actions.float(), batch["actions"]
    torch.testing.assert_close(out.loss, (pred - target).abs().mean())
    torch.testing.assert_close(out.curr_action_l1, (pred[:, 0] - target[:, 0]).abs().mean())
    torch.testing.assert_close(out.next_actions_l1, (pred[:, 1:] - target[:, 1:]).abs().mean())
    assert out.raw_latent_features is None and out.action_query_features is None
    out.loss.backward()
    assert model.action_queries.weight.grad is not None
    assert model.vision_backbone.featurizer.patch_embed.proj.weight.grad is not None
    assert model.proprio_projector.fc1.weight.grad is not None
    no_actions = model(**{k: v for k, v in batch.items() if k != "actions"})
    assert no_actions.loss is None and no_actions.curr_action_l1 is None and no_actions.next_actions_l1 is None


def reference_sequence(model: VLAAdapter, batch) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Build the LLM input by hand, row by row: [tok0][P patches][rest of prompt][Q queries][pad]."""
    cfg = model.config
    p, q = cfg.num_patches, cfg.num_action_queries
    patches = model.projector(model.vision_backbone(batch["pixel_values"]))
    embed = model.language_model.model.embed_tokens
    rows, masks, query_positions = [], [], []
    for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
        ids = batch["input_ids"][i]
        text = embed(ids).clone()
        text[n - q : n] = model.action_queries.weight
        rows.append(torch.cat([text[:1], patches[i], text[1:]]))
        masks.append(torch.cat([torch.ones(1 + p, dtype=torch.bool), batch["attention_mask"][i, 1:]]))
        query_positions.append(list(range(p + n - q, p + n)))
    return torch.stack(rows), torch.stack(masks), query_positions


def test_token_layout_and_head_slicing(model, make_batch):
    """The head reads [0, P) and the Q states ending one before the last query (upstream quirk 1), per row,
    from layers 1..n; CRaFT features use the true vision / query positions."""
    cfg = model.config
    p, q, n_layers = cfg.num_patches, cfg.num_action_queries, cfg.llm.num_hidden_layers
    batch = make_batch(cfg, LENGTHS)
    layout = model.token_layout(batch["attention_mask"])
    embeds, mask, query_positions = reference_sequence(model, batch)
    assert layout.query_positions.tolist() == query_positions
    assert layout.head_query_positions.tolist() == [[j - 1 for j in row] for row in query_positions]
    built, built_mask = model._embed(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], layout)
    torch.testing.assert_close(built, embeds, rtol=0, atol=0)
    assert torch.equal(built_mask, mask)
    hidden = hidden_states_of(model.language_model, embeds, mask)

    captured = {}
    hook = model.action_head.register_forward_pre_hook(lambda mod, args: captured.update(args=args))
    m = 1
    out = model(**batch, output_craft_features=True, craft_layer_idx=m)
    hook.remove()
    vision_states, query_states, proprio_token = captured["args"]
    assert len(vision_states) == len(query_states) == n_layers
    for i in range(n_layers):
        layer = hidden[i + 1]  # block i reads layer i + 1
        torch.testing.assert_close(vision_states[i], layer[:, 0:p])
        for r, positions in enumerate(query_positions):
            shifted = [j - 1 for j in positions]  # last prompt token + queries 0..Q-2
            torch.testing.assert_close(query_states[i][r], layer[r, shifted])
    assert proprio_token.shape == (len(LENGTHS), 1, cfg.llm.hidden_size)

    torch.testing.assert_close(out.raw_latent_features, hidden[m][:, 1 : 1 + p])
    assert out.raw_latent_features.shape == (len(LENGTHS), p, cfg.llm.hidden_size)
    assert out.action_query_features.shape == (len(LENGTHS), q, cfg.llm.hidden_size)
    for r, positions in enumerate(query_positions):
        torch.testing.assert_close(out.action_query_features[r], hidden[-1][r, positions])


def test_rows_are_independent_of_padding_and_batch(model, make_batch):
    """Right padding: a row's prediction does not depend on the other rows or on how much padding follows."""
    batch = make_batch(model.config, LENGTHS)
    together = model(**batch).predicted_actions
    for r, n in enumerate(LENGTHS):
        alone = {k: v[r : r + 1] for k, v in batch.items()}
        alone["input_ids"], alone["attention_mask"] = alone["input_ids"][:, :n], alone["attention_mask"][:, :n]
        torch.testing.assert_close(model(**alone).predicted_actions[0], together[r], rtol=1e-4, atol=1e-5)


def test_craft_features_come_from_the_same_forward(model, make_batch):
    """One LLM forward serves the action loss and the CRaFT features, and the features are differentiable
    w.r.t. the VLM (CRaFT's representation constraint needs their gradients)."""
    cfg = model.config
    batch = make_batch(cfg, LENGTHS)
    calls = []
    hook = model.language_model.model.register_forward_hook(lambda *args: calls.append(1))
    out = model(**batch, output_craft_features=True)
    hook.remove()
    assert len(calls) == 1
    with torch.no_grad():
        plain = model(**batch)
    torch.testing.assert_close(out.loss, plain.loss, rtol=0, atol=0)
    grads = torch.autograd.grad(
        out.raw_latent_features.square().sum() + out.action_query_features.square().sum(),
        [model.vision_backbone.featurizer.patch_embed.proj.weight, model.action_queries.weight],
    )
    assert all(g.abs().sum() > 0 for g in grads)
    # Default layer is num_layers // 2; an out-of-range layer is an error.
    explicit = model(**batch, output_craft_features=True, craft_layer_idx=cfg.llm.num_hidden_layers // 2)
    torch.testing.assert_close(out.raw_latent_features, explicit.raw_latent_features)
    with pytest.raises(ValueError, match="craft_layer_idx"):
        model(**batch, output_craft_features=True, craft_layer_idx=cfg.llm.num_hidden_layers + 1)


def test_bad_inputs_are_rejected(model, make_batch):
    cfg = model.config
    batch = make_batch(cfg, LENGTHS)
    left_padded = dict(batch, attention_mask=batch["attention_mask"].flip(1))
    with pytest.raises(ValueError, match="right-padded"):
        model(**left_padded)
    short = make_batch(cfg, [cfg.num_action_queries + 1])
    with pytest.raises(ValueError, match="num_action_queries"):
        model(**short)
    with pytest.raises(ValueError, match="channels"):
        model(**dict(batch, pixel_values=batch["pixel_values"][:, :6]))
    with pytest.raises(ValueError, match="proprio"):
        model(**dict(batch, proprio=None))
    with pytest.raises(ValueError, match="actions"):
        model(**dict(batch, actions=batch["actions"][:, :2]))


def test_training_mode_adds_head_noise(tiny_config, make_batch):
    torch.manual_seed(0)
    model = VLAAdapter(tiny_config(train_noise_std=0.02))
    batch = make_batch(model.config, LENGTHS)
    with torch.no_grad():
        model.eval()
        e1, e2 = model(**batch).predicted_actions, model(**batch).predicted_actions
        model.train()
        t1, t2 = model(**batch).predicted_actions, model(**batch).predicted_actions
    torch.testing.assert_close(e1, e2, rtol=0, atol=0)
    assert not torch.allclose(t1, t2)


def test_predict_action_unnormalises(tiny_config, make_batch, dataset_statistics):
    torch.manual_seed(0)
    model = VLAAdapter(tiny_config(train_noise_std=0.02)).train()  # noise must NOT apply in predict_action
    stats = dataset_statistics["toy_dataset"]
    batch = make_batch(model.config, LENGTHS)
    proprio_raw = torch.tensor(stats["proprio"]["q01"]) + torch.rand(len(LENGTHS), 8) * 0.1
    actions = model.predict_action(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                   proprio_raw, stats)
    assert model.training  # mode restored
    assert actions.dtype == torch.float32
    model.eval()
    with torch.no_grad():
        normalised_proprio = normalize_bounds_q99(proprio_raw, stats["proprio"])
        norm = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                     normalised_proprio).predicted_actions
    torch.testing.assert_close(actions, unnormalize_bounds_q99(norm, stats["action"]))
    # By hand: masked dims map [-1, 1] -> [q01, q99]; the gripper (mask False) passes through.
    q01, q99 = torch.tensor(stats["action"]["q01"]), torch.tensor(stats["action"]["q99"])
    by_hand = 0.5 * (norm + 1) * (q99 - q01 + 1e-8) + q01
    torch.testing.assert_close(actions[..., :6], by_hand[..., :6])
    torch.testing.assert_close(actions[..., 6], norm[..., 6])
    assert not torch.allclose(actions[..., :6], norm[..., :6])


def test_without_proprio(tiny_config, make_batch, tmp_path, tiny_tokenizer, dataset_statistics):
    torch.manual_seed(0)
    model = VLAAdapter(dataclasses.replace(tiny_config(), use_proprio=False)).eval()
    assert model.proprio_projector is None
    batch = make_batch(model.config, LENGTHS)
    batch["proprio"] = None
    with torch.no_grad():
        expected = model(**batch).predicted_actions
    path = save_released_checkpoint(model, tmp_path / "ckpt", tiny_tokenizer, dataset_statistics)
    assert not list(path.glob("proprio_projector*"))
    loaded = load_vla_checkpoint(path).model
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).predicted_actions, expected, rtol=0, atol=0)
