"""Linear evaluation: the feature layouts against the reference's numbers, the recipe, a probe that learns, the grid of
heads (one backbone forward per batch, the best chosen on validation) and the cached-features mode."""

import copy
import math

import pytest
import torch

from dino_hf import DinoConfig, DinoViTModel
from dino_hf.conversion import convert_reference_backbone_state_dict
from dino_hf.evaluation import (
    LinearClassifier,
    LinearProbeConfig,
    LinearProbeResult,
    evaluate_linear_probe,
    extract_linear_features,
    extract_probe_features,
    train_linear_probe,
    train_linear_probe_on_features,
)
from dino_hf.evaluation.linear import DEFAULT_BASE_LRS
from dino_hf.testing_utils import tiny_config


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
    assert (recipe.epochs, recipe.momentum, recipe.weight_decays) == (100, 0.9, (0.0,))
    assert recipe.base_lrs == DEFAULT_BASE_LRS and 0.001 in recipe.base_lrs  # the reference's lr is in the grid
    reference = LinearProbeConfig(base_lrs=0.001, weight_decays=0)  # a grid of one: the reference's protocol
    assert reference.grid() == [(0.001, 0.0)]
    assert reference.learning_rates(1024) == pytest.approx([0.004])  # 8 GPUs x 128 images in the reference
    crossed = LinearProbeConfig(base_lrs=(0.1, 1.0), weight_decays=(0.0, 1e-4))
    assert crossed.grid() == [(0.1, 0.0), (1.0, 0.0), (0.1, 1e-4), (1.0, 1e-4)]
    assert crossed.learning_rates(128) == pytest.approx([0.05, 0.5, 0.05, 0.5])
    with pytest.raises(ValueError, match="base_lrs"):
        LinearProbeConfig(base_lrs=())
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
    config = LinearProbeConfig(epochs=12, base_lrs=(16.0,), n_last_blocks=2, eval_every=4)
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

    config = LinearProbeConfig(epochs=3, base_lrs=(0.001,), n_last_blocks=1)
    train_linear_probe(model, per_epoch, num_labels=3, config=config, global_batch_size=256)
    assert epochs_seen == [0, 1, 2]
    with pytest.raises(ValueError, match="one-shot iterator"):
        train_linear_probe(model, iter(train), num_labels=3, config=config)
    with pytest.raises(ValueError, match="exceeds the backbone's 2 blocks"):
        train_linear_probe(model, train, num_labels=3, config=LinearProbeConfig(base_lrs=(0.001,), n_last_blocks=4))
    with pytest.raises(ValueError, match="nothing to choose"):
        train_linear_probe(model, train, num_labels=3, config=LinearProbeConfig(n_last_blocks=1))


def count_backbone_forwards(model: DinoViTModel) -> list[int]:
    """Every backbone forward embeds its pixels once: count the embedding layer's calls."""
    calls = [0]
    model.embeddings.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_grid_trains_every_head_from_one_backbone_forward_per_batch():
    torch.manual_seed(0)
    model = DinoViTModel(tiny_config()).eval()
    forwards = count_backbone_forwards(model)
    train, held_out = toy_batches(3, 8, seed=3), toy_batches(2, 8, seed=4)
    config = LinearProbeConfig(epochs=2, base_lrs=(0.5, 2.0, 8.0), weight_decays=(0.0, 0.1), n_last_blocks=2)
    result = train_linear_probe(model, train, num_labels=3, config=config, eval_batches=held_out)
    # 2 epochs x 3 training batches + 2 evaluations x 2 batches, whatever the number of heads (6).
    assert forwards[0] == 2 * 3 + 2 * 2
    assert len(result.classifiers) == 6 and len(result.history) == 2 * 6
    assert [(row["base_lr"], row["weight_decay"]) for row in result.heads] == config.grid()
    assert [row["lr"] for row in result.heads] == pytest.approx([lr * 8 / 256 / 2 for lr in (0.5, 2, 8)] * 2)
    assert all({"train_loss", "eval_top1", "eval_loss"} <= set(row) for row in result.history)
    weights = [c.linear.weight for c in result.classifiers]
    assert all(not torch.equal(weights[0], w) for w in weights[1:])  # each head trained with its own settings


def test_each_head_is_what_training_it_alone_gives():
    """The summed loss of the grid gives each head its own gradient: a grid's head equals a grid of one."""
    generator = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 4, (40,), generator=generator)
    features = torch.randn(40, 16, generator=generator) + 3 * torch.nn.functional.one_hot(labels, 16).float()
    stored = {"features": features, "labels": labels}
    # 1e12 blows up (weights of order 1e10, or NaN with weight decay): its neighbours are unaffected.
    config = LinearProbeConfig(epochs=3, base_lrs=(1.0, 10.0, 1e12), weight_decays=(0.0, 0.01))
    torch.manual_seed(0)
    grid = train_linear_probe_on_features(stored, 4, config, eval_features=stored, batch_size=16)
    for head, (base_lr, weight_decay) in enumerate(config.grid()):
        torch.manual_seed(0)
        for _ in range(head):  # the grid initialised `head` classifiers before this one
            LinearClassifier(16, 4)
        alone = LinearProbeConfig(epochs=3, base_lrs=(base_lr,), weight_decays=(weight_decay,))
        single = train_linear_probe_on_features(stored, 4, alone, batch_size=16)
        torch.testing.assert_close(grid.classifiers[head].state_dict(), single.classifier.state_dict(), equal_nan=True)
    assert grid.classifiers[2].linear.weight.abs().max() > 1e6 and grid.classifiers[5].linear.weight.isnan().any()
    assert grid.best_head != 5 and not any(math.isnan(row["eval_top1"]) for row in grid.heads)


def test_best_head_is_chosen_on_validation():
    # The rule: the best final validation top-1, ties broken by the lower validation loss (a NaN loss loses);
    # the training loss plays no part.
    result = LinearProbeResult(classifiers=[LinearClassifier(4, 2) for _ in range(4)], grid=[(0.1, 0.0)] * 4)
    finals = [(0.01, 70.0, 0.9), (0.5, 80.0, 0.7), (0.4, 80.0, 0.6), (0.3, 80.0, float("nan"))]
    for head, (train_loss, top1, loss) in enumerate(finals):
        row = {"epoch": 0, "head": head, "base_lr": 0.1, "weight_decay": 0.0, "lr": 0.1, "train_loss": train_loss}
        result.history.append({**row, "eval_top1": top1, "eval_loss": loss})
    result._choose_best()
    assert result.best_head == 2 and result.classifier is result.classifiers[2] and result.best_top1 == 80.0
    assert "| 2* |" in result.table() and result.to_dict()["best"]["eval_loss"] == 0.6
    wrapped = LinearProbeResult(classifier=result.classifiers[0])  # a classifier trained elsewhere, as a result
    assert wrapped.classifier is result.classifiers[0] and wrapped.best_top1 is None and wrapped.best == {}

    # In a real grid, a far too small learning rate stays near chance and is not chosen.
    torch.manual_seed(0)
    model = DinoViTModel(tiny_config()).eval()
    train, held_out = toy_batches(4, 12, seed=0), toy_batches(2, 12, seed=1)
    config = LinearProbeConfig(epochs=6, base_lrs=(1e-6, 16.0), n_last_blocks=2, eval_every=3)
    result = train_linear_probe(model, train, num_labels=3, config=config, eval_batches=held_out)
    finals = result.heads
    assert result.best_head == 1 and finals[1]["eval_top1"] > finals[0]["eval_top1"]
    assert result.best_top1 == max(row["eval_top1"] for row in finals)


def test_cached_features_give_the_online_heads_without_augmentation():
    model = DinoViTModel(tiny_config()).eval()
    train, held_out = toy_batches(3, 8, seed=6), toy_batches(2, 8, seed=7)
    config = LinearProbeConfig(epochs=3, base_lrs=(1.0, 8.0), n_last_blocks=2)
    torch.manual_seed(0)
    online = train_linear_probe(model, train, num_labels=3, config=config, eval_batches=held_out)

    forwards = count_backbone_forwards(model)
    stored = extract_probe_features(model, train, config, progress=False)
    stored_eval = extract_probe_features(model, held_out, config, progress=False)
    assert forwards[0] == 3 + 2 and stored["features"].shape == (24, config.feature_dim(64))
    torch.manual_seed(0)
    cached = train_linear_probe_on_features(stored, 3, config, eval_features=stored_eval, batch_size=8, shuffle=False)
    assert forwards[0] == 5  # training on stored features runs no backbone
    for a, b in zip(online.classifiers, cached.classifiers, strict=True):
        torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=1e-5, atol=1e-6)
    for a, b in zip(online.history, cached.history, strict=True):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6) for k in a)
    assert cached.best_head == online.best_head


def test_cached_features_shuffle_per_epoch_and_need_labels():
    features = {"features": torch.randn(10, 4), "labels": torch.arange(10) % 2}
    seen = []
    original = LinearClassifier.forward

    def record(self, x):
        seen.append(x.clone())
        return original(self, x)

    config = LinearProbeConfig(epochs=2, base_lrs=(0.1,))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LinearClassifier, "forward", record)
        train_linear_probe_on_features(features, 2, config, batch_size=10, seed=1)
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])  # a new order each epoch
    assert torch.equal(seen[0].sort(0).values, features["features"].sort(0).values)  # every feature once
    with pytest.raises(ValueError, match="one label per feature"):
        train_linear_probe_on_features({"features": torch.randn(3, 4), "labels": None}, 2, config)
