"""Linear evaluation: the feature layouts against the reference's numbers, the recipe, and a probe that learns."""

import copy
import math

import pytest
import torch
from conftest import tiny_config

from dino_hf import DinoConfig, DinoViTModel
from dino_hf.conversion import convert_reference_backbone_state_dict
from dino_hf.evaluation import (
    LinearClassifier,
    LinearProbeConfig,
    evaluate_linear_probe,
    extract_linear_features,
    train_linear_probe,
)


def reference_model(reference) -> DinoViTModel:
    model = DinoViTModel(tiny_config())
    state = {k[len("backbone.") :]: v for k, v in reference.items() if k.startswith("backbone.")}
    model.load_state_dict(convert_reference_backbone_state_dict(state))
    return model.eval()


def test_feature_layouts_match_the_reference_intermediate_layers(reference):
    model = reference_model(reference)
    pixels = reference["input.32x32"]
    last2 = reference["output.intermediate_last2.32x32"]  # the reference's get_intermediate_layers(x, 2)
    with torch.no_grad():
        vit_b_style = extract_linear_features(model, pixels, n_last_blocks=2, avgpool_patchtokens=True)
        cls_only = extract_linear_features(model, pixels, n_last_blocks=1)
    assert vit_b_style.shape == (2, 64 * 3)
    assert (vit_b_style[:, :64] - last2[0][:, 0]).abs().max() < 1e-5
    assert (vit_b_style[:, 64:128] - last2[1][:, 0]).abs().max() < 1e-5
    assert (vit_b_style[:, 128:] - last2[1][:, 1:].mean(dim=1)).abs().max() < 1e-5
    # One block, no pooling: the DINO feature.
    assert (cls_only - reference["output.cls.32x32"]).abs().max() < 1e-5


def test_vit_small_layout_is_the_last_four_cls_tokens():
    model = DinoViTModel(tiny_config(num_hidden_layers=5)).eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = extract_linear_features(model, pixels, n_last_blocks=4)
        hidden = model(pixels, output_hidden_states=True).hidden_states  # embeddings + 5 blocks, before the norm
    expected = torch.cat([model.layernorm(h)[:, 0] for h in hidden[-4:]], dim=-1)
    assert features.shape == (3, LinearProbeConfig().feature_dim(64)) == (3, 256)
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)


def test_recipe_defaults_and_classifier_initialisation():
    recipe = LinearProbeConfig()
    assert (recipe.epochs, recipe.base_lr, recipe.momentum, recipe.weight_decay) == (100, 0.001, 0.9, 0.0)
    assert recipe.learning_rate(1024) == pytest.approx(0.004)  # 8 GPUs x 128 images in the reference
    small = LinearProbeConfig.for_backbone(DinoConfig.from_preset("vit_small"))
    base = LinearProbeConfig.for_backbone(DinoConfig.from_preset("vit_base"), epochs=5)
    assert (small.n_last_blocks, small.avgpool_patchtokens, small.feature_dim(384)) == (4, False, 1536)
    assert (base.n_last_blocks, base.avgpool_patchtokens, base.feature_dim(768), base.epochs) == (1, True, 1536, 5)

    classifier = LinearClassifier(1536, num_labels=1000)
    weight = classifier.linear.weight
    assert abs(weight.std().item() - 0.01) < 2e-4 and abs(weight.mean().item()) < 1e-4
    assert torch.count_nonzero(classifier.linear.bias) == 0
    assert classifier(torch.randn(2, 3, 512)).shape == (2, 1000)  # inputs are flattened


def toy_batches(count: int, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three classes that differ in which colour channel is bright: separable, yet not trivially so after the ViT."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, 3, (batch_size,), generator=generator)
        pixels = 0.5 * torch.randn(batch_size, 3, 32, 32, generator=generator)
        pixels[torch.arange(batch_size), labels] += 2.0
        batches.append((pixels, labels))
    return batches


def test_probe_learns_a_separable_problem_with_the_cosine_recipe():
    model = DinoViTModel(tiny_config()).eval()
    frozen = copy.deepcopy(model.state_dict())
    train, held_out = toy_batches(4, 12, seed=0), toy_batches(2, 12, seed=1)
    config = LinearProbeConfig(epochs=12, base_lr=16.0, n_last_blocks=2, eval_every=4)
    result = train_linear_probe(model, train, num_labels=3, config=config, eval_batches=held_out)

    lr0 = 16.0 * 12 / 256  # linear scaling with the observed global batch
    expected_lrs = [lr0 * (1 + math.cos(math.pi * e / 12)) / 2 for e in range(12)]
    assert [h["lr"] for h in result.history] == pytest.approx(expected_lrs)
    assert [e for e, h in enumerate(result.history) if "eval_top1" in h] == [0, 4, 8, 11]
    assert result.history[-1]["train_loss"] < 0.3 * result.history[0]["train_loss"]
    assert result.history[-1]["eval_top1"] == 100.0 and result.best_top1 == 100.0
    # The backbone stays frozen and unchanged.
    assert all(torch.equal(frozen[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters())

    # Mapping batches work as well, and the metrics are consistent with a direct computation.
    as_dicts = [{"pixel_values": x, "labels": y} for x, y in held_out]
    metrics = evaluate_linear_probe(model, result.classifier, as_dicts, config)
    with torch.no_grad():
        logits = torch.cat([result.classifier(extract_linear_features(model, x, 2)) for x, _ in held_out])
    labels = torch.cat([y for _, y in held_out])
    assert metrics["top1"] == 100.0 * (logits.argmax(1) == labels).float().mean().item()
    assert metrics["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    assert "top5" not in metrics  # fewer than 5 labels, as in the reference


def test_batches_per_epoch_and_one_shot_iterators():
    model = DinoViTModel(tiny_config()).eval()
    train = toy_batches(2, 6, seed=2)
    epochs_seen = []

    def per_epoch(epoch):
        epochs_seen.append(epoch)
        return train

    config = LinearProbeConfig(epochs=3, n_last_blocks=1)
    train_linear_probe(model, per_epoch, num_labels=3, config=config, global_batch_size=256)
    assert epochs_seen == [0, 1, 2]
    with pytest.raises(ValueError, match="one-shot iterator"):
        train_linear_probe(model, iter(train), num_labels=3, config=config)
    with pytest.raises(ValueError, match="exceeds the backbone's 2 blocks"):
        train_linear_probe(model, train, num_labels=3, config=LinearProbeConfig(n_last_blocks=4))
