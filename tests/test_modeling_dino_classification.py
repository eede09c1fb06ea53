"""DinoForImageClassification and the reference's linear-evaluation feature layout."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments, pipeline

from dino_hf import DinoConfig, DinoForImageClassification, DinoViTModel
from dino_hf.conversion import read_linear_probe
from dino_hf.evaluation import (
    LinearClassifier,
    LinearProbeResult,
    extract_linear_features,
    save_model_with_processor,
)


def tiny_config(**overrides):
    return DinoConfig(
        **{
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "drop_path_rate": 0.0,
            **overrides,
        }
    )


def tiny_backbone(**overrides):
    torch.manual_seed(0)
    return DinoViTModel(tiny_config(**overrides)).eval()


def reference_features(model, images, n, avgpool):
    """The reference eval_linear.py feature code, verbatim in its operations."""
    intermediate_output = model.get_intermediate_layers(images, n)
    output = torch.cat([x[:, 0] for x in intermediate_output], dim=-1)
    if avgpool:
        output = torch.cat(
            (output.unsqueeze(-1), torch.mean(intermediate_output[-1][:, 1:], dim=1).unsqueeze(-1)), dim=-1
        )
        output = output.reshape(output.shape[0], -1)
    return output


class ReferenceLinearClassifier(nn.Module):
    """The reference's LinearClassifier (eval_linear.py)."""

    def __init__(self, dim, num_labels=1000):
        super().__init__()
        self.num_labels = num_labels
        self.linear = nn.Linear(dim, num_labels)
        self.linear.weight.data.normal_(mean=0.0, std=0.01)
        self.linear.bias.data.zero_()

    def forward(self, x):
        x = x.view(x.size(0), -1)
        return self.linear(x)


@torch.no_grad()
def test_linear_features_match_reference_layouts():
    model = tiny_backbone()
    images = torch.randn(3, 3, 32, 32)
    blocks = model.get_intermediate_layers(images, 4)
    vit_s = model.get_linear_features(images, 4, False)
    torch.testing.assert_close(vit_s, torch.cat([b[:, 0] for b in blocks], dim=-1), rtol=0, atol=0)
    torch.testing.assert_close(vit_s, reference_features(model, images, 4, False), rtol=0, atol=0)

    vit_b = model.get_linear_features(images, 1, True)
    torch.testing.assert_close(vit_b, reference_features(model, images, 1, True), rtol=0, atol=0)
    # Interleaved: even positions the [CLS] token, odd ones the patch average (not [cls | avg]).
    torch.testing.assert_close(vit_b[:, 0::2], blocks[-1][:, 0], rtol=0, atol=0)
    torch.testing.assert_close(vit_b[:, 1::2], blocks[-1][:, 1:].mean(dim=1), rtol=0, atol=0)
    assert not torch.equal(vit_b, torch.cat((blocks[-1][:, 0], blocks[-1][:, 1:].mean(dim=1)), dim=-1))

    # Several blocks with pooling (the reference's stacking fails there): [cls^1 | cls^2 | avg], as DINOv2.
    two = model.get_linear_features(images, 2, True)
    expected = torch.cat((blocks[-2][:, 0], blocks[-1][:, 0], blocks[-1][:, 1:].mean(dim=1)), dim=-1)
    torch.testing.assert_close(two, expected, rtol=0, atol=0)
    # extract_linear_features is the same function.
    torch.testing.assert_close(extract_linear_features(model, images, 1, True), vit_b, rtol=0, atol=0)


def test_config_defaults_by_width(tmp_path):
    small, base = DinoConfig.from_preset("vit_small"), DinoConfig.from_preset("vit_base")
    assert (small.n_last_blocks, small.avgpool_patchtokens, small.linear_feature_dim) == (4, False, 1536)
    assert (base.n_last_blocks, base.avgpool_patchtokens, base.linear_feature_dim) == (1, True, 1536)
    shallow = tiny_config(num_hidden_layers=2)
    assert (shallow.n_last_blocks, shallow.avgpool_patchtokens) == (2, False)
    config = tiny_config(n_last_blocks=1, avgpool_patchtokens=True)
    config.save_pretrained(tmp_path)
    loaded = DinoConfig.from_pretrained(tmp_path)
    assert (loaded.n_last_blocks, loaded.avgpool_patchtokens) == (1, True)
    with pytest.raises(ValueError, match="n_last_blocks"):
        tiny_config(n_last_blocks=5)


@pytest.mark.parametrize("n_last_blocks, avgpool", [(4, False), (1, True)])
@torch.no_grad()
def test_reference_linear_weights_file_gives_reference_logits(tmp_path, n_last_blocks, avgpool):
    backbone = tiny_backbone()
    dim = backbone.config.hidden_size * (n_last_blocks + int(avgpool))
    torch.manual_seed(1)
    reference = ReferenceLinearClassifier(dim, num_labels=7)
    reference.linear.weight.normal_()  # trained-looking weights, so a permuted layout would show
    reference.linear.bias.normal_()
    # What eval_linear.py saves around its DistributedDataParallel classifier.
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    path = tmp_path / "dino_linearweights.pth"
    torch.save({"epoch": 100, "state_dict": state, "best_acc": 78.2}, path)

    model = DinoForImageClassification.from_linear_probe(
        backbone, read_linear_probe(path), n_last_blocks=n_last_blocks, avgpool_patchtokens=avgpool
    )
    images = torch.randn(4, 3, 32, 32)
    expected = reference(reference_features(backbone, images, n_last_blocks, avgpool))
    torch.testing.assert_close(model(images).logits, expected, rtol=1e-5, atol=1e-5)
    assert model.config.num_labels == 7


def test_from_linear_probe_checks_width_and_names():
    backbone = tiny_backbone()
    probe = LinearClassifier(backbone.config.hidden_size * 4, num_labels=3)
    model = DinoForImageClassification.from_linear_probe(backbone, probe.linear, id2label={0: "a", 1: "b", 2: "c"})
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"} and model.config.label2id["c"] == 2
    torch.testing.assert_close(model.classifier.weight, probe.linear.weight, rtol=0, atol=0)
    from_result = DinoForImageClassification.from_linear_probe(
        backbone, read_linear_probe(LinearProbeResult(classifier=probe))
    )
    torch.testing.assert_close(from_result.classifier.bias, probe.linear.bias, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pass the n_last_blocks"):
        DinoForImageClassification.from_linear_probe(backbone, LinearClassifier(64, 3).linear)
    with pytest.raises(ValueError, match="id2label has 2 names"):
        DinoForImageClassification.from_linear_probe(backbone, probe.linear, id2label={0: "a", 1: "b"})
    with pytest.raises(TypeError, match="read_linear_probe"):  # other forms are read by conversion, not the model
        DinoForImageClassification.from_linear_probe(backbone, probe)


def test_head_is_reference_initialised_and_backbone_loads_into_it(tmp_path):
    backbone = tiny_backbone()
    backbone.save_pretrained(tmp_path)
    model, info = DinoForImageClassification.from_pretrained(tmp_path, num_labels=10, output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"} and not info["unexpected_keys"]
    for name, tensor in backbone.state_dict().items():
        torch.testing.assert_close(model.dino.state_dict()[name], tensor, rtol=0, atol=0)
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.2)
    assert model.classifier.bias.abs().max().item() == 0.0


@torch.no_grad()
def test_save_and_load_round_trip(tmp_path):
    model = DinoForImageClassification(tiny_config(id2label={0: "disk", 1: "ring", 2: "star"})).eval()
    model.classifier.bias.normal_()
    images = torch.randn(2, 3, 32, 32)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, DinoForImageClassification)
    assert loaded.config.id2label == {0: "disk", 1: "ring", 2: "star"}
    torch.testing.assert_close(loaded(images).logits, model(images).logits, rtol=0, atol=0)


def test_loss_follows_problem_type():
    model = DinoForImageClassification(tiny_config(num_labels=3)).eval()
    images = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([0, 2])
    out = model(images, labels=labels)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, labels))
    model.config.problem_type = "multi_label_classification"
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    out = model(images, labels=targets)
    torch.testing.assert_close(out.loss, nn.functional.binary_cross_entropy_with_logits(out.logits, targets))
    loss, logits = model(images, labels=targets, return_dict=False)
    assert logits.shape == (2, 3)


def test_image_classification_pipeline(tmp_path):
    model = DinoForImageClassification(tiny_config(id2label={0: "disk", 1: "ring", 2: "star"})).eval()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    save_model_with_processor(model, tmp_path)
    classify = pipeline("image-classification", model=str(tmp_path), device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    predictions = classify(image, top_k=3)
    assert [p["label"] for p in predictions][0] == "ring"
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-5)


class _Images(torch.utils.data.Dataset):
    def __init__(self, n=16):
        generator = torch.Generator().manual_seed(0)
        self.labels = torch.randint(0, 2, (n,), generator=generator)
        # The label is readable from the image: class 1 is brighter.
        self.pixels = torch.randn(n, 3, 32, 32, generator=generator) + 2.0 * self.labels[:, None, None, None]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.pixels[i], "labels": self.labels[i]}


def test_trainer_trains_a_few_steps(tmp_path):
    torch.manual_seed(0)
    model = DinoForImageClassification(tiny_config(num_labels=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        label_smoothing_factor=0.1,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_Images())
    result = trainer.train()
    assert result.global_step == 4 and np.isfinite(result.training_loss)
    after = model.state_dict()
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])
    assert not torch.equal(after["dino.encoder.layer.0.mlp.fc1.weight"], before["dino.encoder.layer.0.mlp.fc1.weight"])
