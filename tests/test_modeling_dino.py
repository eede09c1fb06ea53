"""Model classes: numerics pinned to the reference implementation, formulas checked against their definitions."""

import json
import math
import os
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES, tiny_config
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from dino_hf import (
    DinoCenter,
    DinoConfig,
    DinoForImageClassification,
    DinoForSelfDistillation,
    DinoHead,
    DinoLoss,
    DinoViTModel,
)
from dino_hf.conversion import convert_reference_backbone_state_dict, convert_reference_network_state_dict
from dino_hf.modeling_dino import koleo_loss, log_sinkhorn_knopp
from dino_hf.testing_utils import run_process_tree


def reference_backbone(reference, **config_overrides) -> DinoViTModel:
    model = DinoViTModel(tiny_config(**config_overrides))
    state = {k.removeprefix("backbone."): v for k, v in reference.items() if k.startswith("backbone.")}
    model.load_state_dict(convert_reference_backbone_state_dict(state))
    return model.eval()


def reference_full_model(reference) -> DinoForSelfDistillation:
    model = DinoForSelfDistillation(tiny_config())
    state = {"center.center": reference["dino_loss.center"]}
    for network in ("student", "teacher"):
        part = {k[len(network) + 1 :]: v for k, v in reference.items() if k.startswith(network + ".")}
        state.update({f"{network}.{k}": v for k, v in convert_reference_network_state_dict(part).items()})
    model.load_state_dict(state, strict=True)
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("size", ["32x32", "16x16", "32x24"])
def test_backbone_matches_reference(reference, attn_implementation, size):
    # 16x16 and 32x24 need position-embedding interpolation (32x24 is non-square).
    model = reference_backbone(reference)
    model.set_attn_implementation(attn_implementation)
    with torch.no_grad():
        output = model(reference[f"input.{size}"])
    torch.testing.assert_close(output.pooler_output, reference[f"output.cls.{size}"], atol=1e-5, rtol=0)
    torch.testing.assert_close(output.last_hidden_state[:, 0], output.pooler_output)


def test_position_embedding_interpolation_non_square_non_native():
    model = DinoViTModel(tiny_config()).eval()
    out = model(torch.randn(2, 3, 48, 24))
    assert out.last_hidden_state.shape == (2, 1 + 6 * 3, 64)
    # At the native resolution the embeddings are used as they are.
    pos = model.embeddings.interpolate_pos_encoding(16, 32, 32)
    assert pos is model.embeddings.position_embeddings
    # A resampled grid keeps the [CLS] position and has the new number of patches.
    resized = model.embeddings.interpolate_pos_encoding(6 * 3, 48, 24)
    assert resized.shape == (1, 19, 64)
    torch.testing.assert_close(resized[:, 0], model.embeddings.position_embeddings[:, 0])


def test_input_not_divisible_by_patch_size_is_a_clear_error():
    model = DinoViTModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="Expected pixel_values of shape"):
        model(torch.randn(1, 1, 32, 32))


def test_last_selfattention_matches_reference_and_rows_are_probabilities(reference):
    model = reference_backbone(reference)  # sdpa by default: only the last block runs explicit attention
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        attentions = model.get_last_selfattention(reference["input.32x32"])
    torch.testing.assert_close(attentions, reference["output.last_selfattention.32x32"], atol=1e-5, rtol=0)
    assert (attentions >= 0).all()
    torch.testing.assert_close(attentions.sum(-1), torch.ones(attentions.shape[:-1]))


def test_eager_output_attentions(reference):
    model = reference_backbone(reference)
    with pytest.raises(ValueError, match="eager"):
        model(reference["input.32x32"], output_attentions=True)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(reference["input.32x32"], output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 17, 17)
    torch.testing.assert_close(out.attentions[-1], reference["output.last_selfattention.32x32"], atol=1e-5, rtol=0)
    for attn in out.attentions:
        torch.testing.assert_close(attn.sum(-1), torch.ones(attn.shape[:-1]))
    # embeddings + one entry per block, before the final LayerNorm
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(model.layernorm(out.hidden_states[-1]), out.last_hidden_state)


def test_encoder_options_agree_with_the_recorded_outputs():
    model = DinoViTModel(tiny_config(num_hidden_layers=3, attn_implementation="eager")).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        recorded = model(pixels, output_hidden_states=True, output_attentions=True)
        embeddings = model.embeddings(pixels)
        last_two = model.encoder(embeddings, n_last_blocks=2)
        cls_only = model.encoder(embeddings, cls_only_last_block=True)
        with_attention = model.encoder(embeddings, return_last_attention=True)
    assert recorded.hidden_states[0] is not None and len(recorded.hidden_states) == 4  # embeddings + 3 blocks
    for got, expected in zip(last_two.last_block_outputs, recorded.hidden_states[-2:], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert last_two.last_attention is None and last_two.last_block_outputs[-1] is last_two.last_hidden_state
    torch.testing.assert_close(cls_only.last_hidden_state, recorded.hidden_states[-1][:, :1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_attention.last_attention, recorded.attentions[-1], rtol=0, atol=0)
    with pytest.raises(ValueError, match="between 1 and 3"):
        model.encoder(embeddings, n_last_blocks=4)
    with pytest.raises(ValueError, match="cls_only_last_block"):
        model.encoder(embeddings, cls_only_last_block=True, return_last_attention=True)


def test_outputs_are_recorded_only_when_asked_and_tuples_keep_their_order():
    model = DinoViTModel(tiny_config(attn_implementation="eager")).eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        plain = model(pixels)
        assert plain.hidden_states is None and plain.attentions is None
        last, pooled, hidden, attentions = model(
            pixels, output_hidden_states=True, output_attentions=True, return_dict=False
        )
        model.config.output_hidden_states = True  # the config's default applies when the call does not say
        from_config = model(pixels)
    torch.testing.assert_close(last, plain.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(pooled, plain.pooler_output, rtol=0, atol=0)
    assert len(hidden) == 3 and len(attentions) == 2 and attentions[0].shape == (1, 4, 17, 17)
    assert len(from_config.hidden_states) == 3 and from_config.attentions is None


def test_eager_and_sdpa_agree():
    model = DinoViTModel(tiny_config()).eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fused = model(pixels).last_hidden_state
        model.set_attn_implementation("eager")
        eager = model(pixels).last_hidden_state
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)


def test_intermediate_layers_match_reference(reference):
    model = reference_backbone(reference)
    with torch.no_grad():
        layers = model.get_intermediate_layers(reference["input.32x32"], n=2)
    torch.testing.assert_close(torch.stack(layers), reference["output.intermediate_last2.32x32"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="between 1 and 2"):
        model.get_intermediate_layers(reference["input.32x32"], n=3)


def test_gradient_checkpointing_gives_the_same_gradients():
    config = tiny_config(drop_path_rate=0.0)
    torch.manual_seed(0)
    plain = DinoViTModel(config).train()
    checkpointed = DinoViTModel(config).train()
    checkpointed.load_state_dict(plain.state_dict())
    with warnings.catch_warnings():  # transformers 5 deprecates gradient_checkpointing_enable (a FutureWarning)
        warnings.simplefilter("error", FutureWarning)
        checkpointed.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in checkpointed.encoder.layer)
    pixels = torch.randn(2, 3, 32, 32)
    plain(pixels).pooler_output.square().sum().backward()
    checkpointed(pixels).pooler_output.square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_stochastic_depth_rates_grow_linearly_and_only_in_training():
    model = DinoViTModel(tiny_config(num_hidden_layers=3, drop_path_rate=0.2))
    rates = [getattr(layer.drop_path, "drop_prob", 0.0) for layer in model.encoder.layer]
    assert rates == pytest.approx([0.0, 0.1, 0.2])
    pixels = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(pixels).pooler_output, model(pixels).pooler_output)


def test_save_load_round_trip_and_auto_model(tmp_path):
    model = DinoViTModel(tiny_config()).eval()
    pixels = torch.randn(2, 3, 32, 32)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    for loaded in (DinoViTModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert type(loaded) is DinoViTModel
        with torch.no_grad():
            torch.testing.assert_close(
                loaded.eval()(pixels).pooler_output, model(pixels).pooler_output, rtol=0, atol=0
            )
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DinoConfig)
    eager = DinoViTModel.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"


def test_trust_remote_code_loading_without_dino_hf(tmp_path):
    model = DinoViTModel(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    pixels = torch.randn(1, 3, 32, 24)
    torch.save(pixels, tmp_path / "pixels.pt")
    with torch.no_grad():
        torch.save(model(pixels).pooler_output, tmp_path / "expected.pt")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_dino.DinoConfig",
        "AutoModel": "modeling_dino.DinoViTModel",
    }
    assert (tmp_path / "modeling_dino.py").exists() and (tmp_path / "configuration_dino.py").exists()
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert "dino_hf" not in sys.modules, "dino_hf was imported"
        assert type(model).__name__ == "DinoViTModel"
        pixels = torch.load({str(tmp_path / "pixels.pt")!r})
        with torch.no_grad():
            got = model(pixels).pooler_output
        torch.testing.assert_close(got, torch.load({str(tmp_path / "expected.pt")!r}), rtol=0, atol=0)
        print("ok")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    # Run from an empty directory so the repository's dino_hf is not importable.
    result = run_process_tree([sys.executable, "-c", script], timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


# ---------------------------------------------------------------------------------------------------------------------
# Head
# ---------------------------------------------------------------------------------------------------------------------


def test_head_structure_and_weight_norm():
    head = DinoHead(in_dim=64, out_dim=256, hidden_dim=128, bottleneck_dim=32, num_layers=3)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert "last_layer.weight_g" not in dict(head.named_parameters())
    assert "last_layer.weight_g" in head.state_dict()
    torch.testing.assert_close(head.last_layer.weight_g, torch.ones(256, 1))
    weight = head.last_layer.weight
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(256))
    features = torch.randn(5, 64)
    bottleneck = F.normalize(head.mlp(features), dim=-1)
    torch.testing.assert_close(head(features), bottleneck @ weight.T)


def test_head_options():
    head = DinoHead(
        in_dim=8, out_dim=16, hidden_dim=12, bottleneck_dim=4, num_layers=2, use_bn=True, norm_last_layer=False
    )
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "BatchNorm1d", "GELU", "Linear"]
    assert "last_layer.weight_g" in dict(head.named_parameters())
    assert [type(m).__name__ for m in DinoHead(8, 16, 12, 4, num_layers=1).mlp] == ["Linear"]


# ---------------------------------------------------------------------------------------------------------------------
# Loss, center, EMA
# ---------------------------------------------------------------------------------------------------------------------


def loss_by_definition(student, teacher, center, student_temp, teacher_temp, batch, teacher_views):
    """The paper's loss written out with loops."""
    student_views = student.shape[0] // batch
    total, pairs = 0.0, 0
    for t in range(teacher_views):
        for s in range(student_views):
            if s == t:
                continue
            pair = 0.0
            for b in range(batch):
                p_t = torch.softmax((teacher[t * batch + b] - center[0]) / teacher_temp, dim=-1)
                log_p_s = torch.log_softmax(student[s * batch + b] / student_temp, dim=-1)
                pair += -(p_t * log_p_s).sum()
            total += pair / batch
            pairs += 1
    return total / pairs


def test_loss_equals_hand_computed_value():
    # Two images, two teacher views, three student views, three prototypes: small enough to check by hand.
    student = torch.tensor(
        [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, -0.3, 0.1], [-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    )
    teacher = torch.tensor([[0.1, 0.0, -0.1], [0.3, 0.0, 0.0], [0.0, 0.2, 0.0], [-0.1, 0.1, 0.0]])
    center = torch.tensor([[0.05, -0.05, 0.0]])
    out = DinoLoss(student_temp=0.1)(student, teacher, center, teacher_temp=0.04, num_teacher_views=2)
    expected = loss_by_definition(student, teacher, center, 0.1, 0.04, batch=2, teacher_views=2)
    torch.testing.assert_close(out.loss, expected)
    # With 2 teacher and 3 student views there are 2*3 - 2 = 4 pairs.
    p_t = torch.softmax((teacher - center) / 0.04, dim=-1)
    entropy = -(p_t * p_t.log()).sum(-1).mean()
    torch.testing.assert_close(out.teacher_entropy, entropy)
    torch.testing.assert_close(out.kl_divergence, out.loss - entropy)


def test_loss_random_matches_definition_and_kl_is_mean_pair_kl():
    batch, teacher_views, student_views, k = 3, 2, 5, 7
    student = torch.randn(student_views * batch, k)
    teacher = torch.randn(teacher_views * batch, k)
    center = torch.randn(1, k) * 0.1
    out = DinoLoss(0.1)(student, teacher, center, 0.05, num_teacher_views=teacher_views)
    torch.testing.assert_close(out.loss, loss_by_definition(student, teacher, center, 0.1, 0.05, batch, teacher_views))
    kls = []
    for t in range(teacher_views):
        for s in range(student_views):
            if s != t:
                p = torch.softmax((teacher[t * batch : (t + 1) * batch] - center) / 0.05, -1)
                log_q = torch.log_softmax(student[s * batch : (s + 1) * batch] / 0.1, -1)
                kls.append((p * (p.log() - log_q)).sum(-1).mean())
    torch.testing.assert_close(out.kl_divergence, torch.stack(kls).mean())


def test_loss_errors():
    with pytest.raises(ValueError, match="not a multiple of the batch size"):
        DinoLoss()(torch.randn(7, 4), torch.randn(4, 4), torch.zeros(1, 4), 0.04)
    with pytest.raises(ValueError, match="at least one"):
        DinoLoss()(torch.randn(2, 4), torch.randn(2, 4), torch.zeros(1, 4), 0.04, num_teacher_views=1)


def test_center_update_formula():
    center = DinoCenter(out_dim=5, momentum=0.9)
    center.center.copy_(torch.arange(5.0)[None])
    teacher = torch.randn(6, 5)
    expected = 0.9 * torch.arange(5.0)[None] + 0.1 * teacher.mean(0, keepdim=True)
    center.update(teacher)
    torch.testing.assert_close(center.center, expected)


def sinkhorn_knopp_by_definition(scores, iterations):
    # DINOv2's teacher normalisation as written there: Q = exp(scores)^T (K x N), Q /= sum(Q), then per iteration
    # rows (prototypes) to 1/K and columns (samples) to 1/N; finally Q *= N. In float64.
    q = scores.double().exp().T
    q = q / q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / n
    return (q * n).T


@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_sinkhorn_knopp_matches_its_definition(iterations):
    scores = torch.randn(12, 5) / 0.07
    targets = log_sinkhorn_knopp(scores, iterations).exp()
    assert targets.dtype == torch.float32
    torch.testing.assert_close(
        targets.double(), sinkhorn_knopp_by_definition(scores, iterations), rtol=1e-5, atol=1e-7
    )
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(12))


def test_sinkhorn_knopp_uses_every_prototype_equally_where_softmax_does_not():
    # Every image prefers prototype 0: a softmax sends all mass there, Sinkhorn-Knopp spreads it over the batch.
    scores = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)) + torch.tensor([6.0, 0.0, 0.0, 0.0])
    assert torch.softmax(scores, dim=1).mean(dim=0)[0] > 0.9
    targets = log_sinkhorn_knopp(scores, 50).exp()
    torch.testing.assert_close(targets.mean(dim=0), torch.full((4,), 0.25), atol=1e-3, rtol=0)
    # Huge scores (a free last layer at a low temperature) neither overflow nor leave a row without a target.
    huge = log_sinkhorn_knopp(scores * 1e4, 3)
    assert torch.isfinite(huge).all()
    torch.testing.assert_close(huge.exp().sum(dim=1), torch.ones(64))


def test_loss_with_sinkhorn_knopp_centering_matches_definition_and_ignores_the_center():
    batch, teacher_views, student_views, k, temp = 4, 2, 5, 6, 0.07
    student, teacher = torch.randn(student_views * batch, k), torch.randn(teacher_views * batch, k)
    loss_fn = DinoLoss(0.1, centering="sinkhorn_knopp", sinkhorn_iterations=3)
    out = loss_fn(student, teacher, torch.randn(1, k), temp, num_teacher_views=teacher_views)
    # All teacher views are normalised together, as DINOv2 does with the global crops.
    targets = sinkhorn_knopp_by_definition(teacher / temp, 3).float()
    pairs = [
        -(targets[t * batch : (t + 1) * batch] * torch.log_softmax(student[s * batch : (s + 1) * batch] / 0.1, -1))
        .sum(-1)
        .mean()
        for t in range(teacher_views)
        for s in range(student_views)
        if s != t
    ]
    torch.testing.assert_close(out.loss, torch.stack(pairs).mean())
    entropy = -(targets * targets.log()).sum(-1).mean()
    torch.testing.assert_close(out.teacher_entropy, entropy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = loss_fn(student.bfloat16(), teacher.bfloat16(), torch.zeros(1, k), temp, num_teacher_views=2)
    assert half.loss.dtype == torch.float32
    reference = loss_fn(student.bfloat16().float(), teacher.bfloat16().float(), torch.zeros(1, k), temp, 2)
    torch.testing.assert_close(half.loss, reference.loss)


def test_sinkhorn_knopp_centering_leaves_the_center_alone_and_is_validated():
    model = DinoForSelfDistillation(tiny_config(centering="sinkhorn_knopp")).train()
    out = model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16))
    out.loss.backward()
    assert torch.count_nonzero(model.center.center) == 0
    assert math.isfinite(out.loss.item())
    with pytest.raises(ValueError, match="centering must be one of"):
        tiny_config(centering="sinkhorn")
    with pytest.raises(ValueError, match="sinkhorn_iterations"):
        tiny_config(sinkhorn_iterations=0)


def test_koleo_loss_matches_its_definition():
    features = torch.randn(7, 5)
    unit = features / features.norm(dim=1, keepdim=True)
    distances = torch.cdist(unit.double(), unit.double()) + torch.eye(7, dtype=torch.float64) * 10
    expected = -(distances.min(dim=1).values + 1e-8).log().mean()
    torch.testing.assert_close(koleo_loss(features).double(), expected, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = koleo_loss(features.bfloat16())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, koleo_loss(features.bfloat16().float()))
    # Spread-out features score lower than bunched ones.
    assert koleo_loss(torch.eye(4)) < koleo_loss(torch.eye(4) + 3.0)


def test_koleo_regulariser_adds_to_the_loss_and_trains_the_student_backbone():
    torch.manual_seed(0)
    model = DinoForSelfDistillation(tiny_config(koleo_loss_weight=0.1)).train()
    plain = DinoForSelfDistillation(tiny_config()).train()
    plain.load_state_dict(model.state_dict())
    global_crops, local_crops = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16)
    out = model(global_crops, local_crops)
    reference = plain(global_crops, local_crops)
    assert reference.koleo_loss is None
    with torch.no_grad():
        features = model.student.backbone.get_cls_features(global_crops)
    expected = koleo_loss(features[:2]) + koleo_loss(features[2:])
    torch.testing.assert_close(out.koleo_loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, reference.loss + 0.1 * expected, rtol=1e-5, atol=1e-6)
    out.koleo_loss.backward()
    assert model.student.backbone.embeddings.cls_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.student.head.parameters())
    with pytest.raises(ValueError, match="koleo_loss_weight"):
        tiny_config(koleo_loss_weight=-1.0)


def test_full_model_matches_reference_step(reference):
    model = reference_full_model(reference).train()
    out = model(reference["crops.global"], reference["crops.local"], teacher_temp=0.04)
    torch.testing.assert_close(out.student_logits, reference["output.student"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.teacher_logits, reference["output.teacher"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, reference["output.loss"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.center.center, reference["output.center_after"], atol=1e-5, rtol=0)
    out.loss.backward()
    grads = [p.grad for p in model.student.parameters() if p.grad is not None]
    grad_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    torch.testing.assert_close(grad_norm, reference["output.student_grad_norm"][0], rtol=1e-4, atol=0)
    # The center moves only after the loss used the old one: recomputing with the old center gives the same loss.
    old = DinoLoss(0.1)(out.student_logits.detach(), out.teacher_logits, reference["dino_loss.center"], 0.04)
    torch.testing.assert_close(old.loss, out.loss.detach())


def test_no_gradient_reaches_the_teacher():
    model = DinoForSelfDistillation(tiny_config(drop_path_rate=0.1)).train()
    out = model(torch.randn(4, 3, 32, 32), torch.randn(6, 3, 16, 16))
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())
    assert out.teacher_logits.grad_fn is None
    trainable = [n for n, p in model.student.named_parameters() if p.requires_grad]
    assert all(model.student.get_parameter(n).grad is not None for n in trainable)
    assert "head.last_layer.weight_g" not in trainable and "head.last_layer.weight_v" in trainable


def test_teacher_starts_as_exact_copy_without_drop_path():
    model = DinoForSelfDistillation(tiny_config(drop_path_rate=0.1))
    for (name, s), t in zip(model.student.state_dict().items(), model.teacher.state_dict().values()):
        assert torch.equal(s, t), name
    assert any(getattr(layer.drop_path, "drop_prob", 0) > 0 for layer in model.student.backbone.encoder.layer)
    assert all(isinstance(layer.drop_path, torch.nn.Identity) for layer in model.teacher.backbone.encoder.layer)


def test_ema_formula():
    model = DinoForSelfDistillation(tiny_config())
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in model.teacher.named_parameters()}
    student = dict(model.student.named_parameters())
    model.update_teacher(0.9)
    for name, p in model.teacher.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[name] + 0.1 * student[name], msg=name)

    # The training step's guarded form: a skipped step leaves the teacher exactly as it was; an applied one rounds
    # as the reference (teacher * m + ((1 - m) * student)), in float32 even under autocast.
    before = {n: p.clone() for n, p in model.teacher.named_parameters()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.update_teacher(0.9, apply=torch.tensor(False))
    assert all(torch.equal(p, before[n]) for n, p in model.teacher.named_parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.update_teacher(0.9, apply=torch.tensor(True))
    for name, p in model.teacher.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[name] * 0.9 + (1 - 0.9) * student[name]), name


def test_forward_argument_errors():
    model = DinoForSelfDistillation(tiny_config())
    with pytest.raises(ValueError, match="not a multiple of num_global_crops"):
        model(torch.randn(5, 3, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of the batch size"):
        model(torch.randn(4, 3, 32, 32), torch.randn(5, 3, 16, 16))


def test_center_updates_only_in_training():
    model = DinoForSelfDistillation(tiny_config()).eval()
    model(torch.randn(4, 3, 32, 32))
    assert torch.count_nonzero(model.center.center) == 0
    model.train()
    model(torch.randn(4, 3, 32, 32))
    assert torch.count_nonzero(model.center.center) > 0


def test_collapse_signals():
    k = 64
    loss_fn = DinoLoss(0.1)
    uniform = loss_fn(torch.zeros(6, k), torch.zeros(4, k), torch.zeros(1, k), 0.04)
    assert uniform.teacher_entropy.item() == pytest.approx(math.log(k), rel=1e-5)
    assert uniform.loss.item() == pytest.approx(math.log(k), rel=1e-5)
    one_hot = torch.zeros(4, k)
    one_hot[:, 3] = 100.0
    assert loss_fn(torch.zeros(6, k), one_hot, torch.zeros(1, k), 0.04).teacher_entropy.item() < 1e-3


def test_self_distillation_save_load_round_trip_and_export(tmp_path):
    model = DinoForSelfDistillation(tiny_config())
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.update_teacher(0.5)
        model.center.center.normal_()
    model.save_pretrained(tmp_path / "full")
    for loaded in (
        DinoForSelfDistillation.from_pretrained(tmp_path / "full"),
        AutoModelForPreTraining.from_pretrained(tmp_path / "full"),
    ):
        assert type(loaded) is DinoForSelfDistillation
        for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a, b), name
        assert not any(p.requires_grad for p in loaded.teacher.parameters())
    crops_g, crops_l = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(crops_g, crops_l).loss, model(crops_g, crops_l).loss, rtol=0, atol=0)

    backbone = model.export_teacher_backbone()
    backbone.save_pretrained(tmp_path / "backbone")
    reloaded = AutoModel.from_pretrained(tmp_path / "backbone").eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels).pooler_output, model.teacher.backbone(pixels).pooler_output)


# ---------------------------------------------------------------------------------------------------------------------
# Precision: the loss, center, EMA and (by default) the head's last layer are float32 under autocast
# ---------------------------------------------------------------------------------------------------------------------


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_loss_under_autocast_is_the_float32_loss(autocast_dtype, input_dtype):
    # Large enough that a half-precision pair product is visibly off (the issue measured 1.7e-3 at K = 16384).
    teacher_views, student_views, batch, k = 2, 6, 8, 4096
    student = (3 * torch.randn(student_views * batch, k)).to(input_dtype)
    teacher = (3 * torch.randn(teacher_views * batch, k)).to(input_dtype)
    center = 0.1 * torch.randn(1, k)

    def run(enabled):
        logits = student.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=enabled):
            out = DinoLoss(0.1)(logits, teacher, center, torch.tensor(0.04), num_teacher_views=teacher_views)
        out.loss.backward()
        return out, logits.grad

    expected, expected_grad = run(False)
    out, grad = run(True)
    for name in ("loss", "teacher_entropy", "kl_divergence", "teacher_mean_entropy"):
        assert getattr(out, name).dtype == torch.float32, name
        assert relative(getattr(out, name), getattr(expected, name)) < 1e-5, name
    assert grad.dtype == input_dtype  # the gradient flows back to the logits in their own dtype
    assert relative(grad, expected_grad) < 1e-4


@pytest.mark.parametrize("float32_last_layer", [True, False])
def test_full_forward_under_bf16_autocast_is_float32_after_the_head(float32_last_layer):
    # Compared: the loss, its gradient with respect to the head outputs, and the center, against float32 computed
    # from the same head outputs. (The backbone and MLP run in bf16 under autocast by design.)
    model = DinoForSelfDistillation(tiny_config(out_dim=2048, float32_last_layer=float32_last_layer)).train()
    global_crops, local_crops = torch.randn(4, 3, 32, 32), torch.randn(8, 3, 16, 16)
    center_before = (0.1 * torch.randn(1, 2048)).requires_grad_(False)
    model.center.center.copy_(center_before)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(global_crops, local_crops, teacher_temp=0.04, return_logits=True)
    out.student_logits.retain_grad()
    out.loss.backward()
    logits_dtype = torch.float32 if float32_last_layer else torch.bfloat16
    assert out.student_logits.dtype == out.teacher_logits.dtype == logits_dtype
    assert out.loss.dtype == model.center.center.dtype == torch.float32

    student = out.student_logits.detach().clone().requires_grad_()
    expected = DinoLoss(0.1)(student, out.teacher_logits, center_before, 0.04)
    expected.loss.backward()
    assert relative(out.loss, expected.loss) < 1e-5
    assert relative(out.student_logits.grad, student.grad) < 1e-4
    expected_center = 0.9 * center_before + 0.1 * out.teacher_logits.float().mean(0, keepdim=True)
    assert relative(model.center.center, expected_center) < 1e-6


def test_float32_last_layer_computes_the_cosines_in_float32():
    head = DinoHead(in_dim=64, out_dim=512, hidden_dim=128, bottleneck_dim=256)
    features = torch.randn(16, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = head.mlp(features)
        logits = head(features)
    assert logits.dtype == torch.float32
    expected = F.linear(F.normalize(hidden.float(), dim=-1), head.last_layer.weight)
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)
    head.float32_last_layer = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(features).dtype == torch.bfloat16


def test_center_is_float32_under_autocast_accumulates_and_skips_when_not_applied():
    center = DinoCenter(out_dim=8, momentum=0.9)
    logits = torch.randn(6, 8).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        center.accumulate(logits[:2])
        center.accumulate(logits[2:])  # two micro-batches, one update from all six rows
        center.commit()
    assert center.center.dtype == torch.float32
    torch.testing.assert_close(center.center, 0.1 * logits.float().mean(0, keepdim=True), rtol=1e-6, atol=1e-7)
    before = center.center.clone()
    center.accumulate(torch.full((2, 8), float("nan")))
    center.commit(apply=torch.tensor(False))
    assert torch.equal(center.center, before)


# ---------------------------------------------------------------------------------------------------------------------
# Files and numbers of earlier versions: saved models keep loading, and give the same outputs
# ---------------------------------------------------------------------------------------------------------------------

DEMO_BACKBONE = FIXTURES / "dino_demo_pretrained"


def demo_input(height: int, width: int) -> torch.Tensor:
    """A fixed image batch in the normalised range, the same on every machine (seeded CPU generator)."""
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(height * 1000 + width)) * 4 - 2


@torch.no_grad()
def demo_backbone_outputs(model: DinoViTModel) -> dict[str, torch.Tensor]:
    """Every way of reading features from the demo backbone, on fixed inputs (`dino_demo_outputs.safetensors` holds
    these as main computed them before the modeling file took the anchor's shape, see fixtures/README.md)."""
    outputs = {}
    for height, width in ((32, 32), (40, 24)):  # the native resolution, and one through interpolated positions
        size, pixels = f"{height}x{width}", demo_input(height, width)
        output = model(pixels, output_hidden_states=True)
        outputs[f"last_hidden_state.{size}"] = output.last_hidden_state
        outputs[f"pooler_output.{size}"] = output.pooler_output
        outputs[f"hidden_states.{size}"] = torch.stack(output.hidden_states)[:, :, 0]  # [CLS] of each, before the norm
        outputs[f"cls_features.{size}"] = model.get_cls_features(pixels)
        outputs[f"intermediate_last2.{size}"] = torch.stack(model.get_intermediate_layers(pixels, 2))[:, :, 0]
        outputs[f"linear_features.{size}"] = model.get_linear_features(pixels)  # the config's: 3 blocks
        outputs[f"linear_features_avgpool.{size}"] = model.get_linear_features(pixels, 1, True)
        outputs[f"last_selfattention_cls.{size}"] = model.get_last_selfattention(pixels)[:, :, 0]
    return outputs


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_the_demo_export_loads_and_gives_the_outputs_it_gave_before(attn_implementation):
    model = DinoViTModel.from_pretrained(DEMO_BACKBONE, attn_implementation=attn_implementation).eval()
    expected = load_file(FIXTURES / "dino_demo_outputs.safetensors")
    outputs = demo_backbone_outputs(model)
    assert outputs.keys() == expected.keys()
    for name, value in outputs.items():
        torch.testing.assert_close(value, expected[name], atol=1e-5, rtol=0, msg=name)


def state_layouts() -> dict[str, dict[str, list[int]]]:
    """Name -> shape of every saved tensor (persistent buffers included) of each model class, on small configs that
    exercise the options that add tensors (stochastic depth, BatchNorm head, trainable last-layer scale, ResNet)."""
    resnet = dict(resnet_embedding_size=8, resnet_hidden_sizes=[8, 16], resnet_depths=[1, 1])
    models = {
        "DinoViTModel": DinoViTModel(tiny_config(drop_path_rate=0.1)),
        "DinoForSelfDistillation": DinoForSelfDistillation(
            tiny_config(drop_path_rate=0.1, use_bn_in_head=True, norm_last_layer=False)
        ),
        "DinoForSelfDistillation.resnet": DinoForSelfDistillation(DinoConfig(backbone="resnet", out_dim=16, **resnet)),
        "DinoForImageClassification": DinoForImageClassification(tiny_config(num_labels=3, avgpool_patchtokens=True)),
    }
    return {
        name: {key: list(value.shape) for key, value in model.state_dict().items()} for name, model in models.items()
    }


def test_saved_tensor_names_and_shapes_are_those_of_earlier_versions():
    """A folder saved by an earlier version loads only if every tensor keeps its name and shape."""
    expected = json.loads((FIXTURES / "dino_state_layouts.json").read_text())
    assert state_layouts() == expected
