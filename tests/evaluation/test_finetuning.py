"""Fine-tuning: parameter groups, data transform, loading, metrics, the CLI end to end (pretrained beats random)."""

import io
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import TrainingArguments, pipeline

from dino_hf import (
    DinoConfig,
    DinoForImageClassification,
    DinoForSelfDistillation,
    DinoViTModel,
    MissingWeightsError,
)
from dino_hf.cli.finetune import main as finetune_main
from dino_hf.evaluation import save_model_with_processor
from dino_hf.evaluation.finetuning import (
    ClassificationTransform,
    DinoFinetuningTrainer,
    classification_metrics,
    finetuning_parameter_groups,
    load_classifier,
    parameter_layer_id,
)
from dino_hf.publishing import HubPublishingError
from dino_hf.testing_utils import FakeHub


FIXTURES = Path(__file__).parent.parent / "fixtures"
PRETRAINED = FIXTURES / "dino_demo_pretrained"
SECRET = "hf_dinoSecretToken0123456789abcdefXYZ"


def tiny_config(**overrides):
    values = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2}
    return DinoConfig(**{**values, **overrides})


def test_parameter_groups_layer_decay_and_weight_decay():
    model = DinoForImageClassification(tiny_config(num_labels=4))
    groups = finetuning_parameter_groups(model, learning_rate=1e-3, weight_decay=0.05, layer_decay=0.5)
    by_param = {id(p): g for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(by_param) == len(names) == sum(len(g["params"]) for g in groups)
    num_layers = 3
    for name, param in names.items():
        group = by_param[id(param)]
        depth = parameter_layer_id(name, num_layers)
        assert group["lr"] == pytest.approx(1e-3 * 0.5 ** (num_layers + 1 - depth))
        no_decay = param.ndim == 1 or name.endswith(("cls_token", "position_embeddings"))
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert parameter_layer_id("dino.embeddings.patch_embeddings.projection.weight", 3) == 0
    assert parameter_layer_id("dino.encoder.layer.2.mlp.fc1.weight", 3) == 3
    assert parameter_layer_id("dino.layernorm.weight", 3) == parameter_layer_id("classifier.weight", 3) == 4
    assert by_param[id(names["classifier.weight"])]["lr"] == pytest.approx(1e-3)
    assert by_param[id(names["dino.embeddings.cls_token"])]["lr"] == pytest.approx(1e-3 / 16)
    # Frozen parameters (linear evaluation) are left out; no decay means one lr.
    model.dino.requires_grad_(False)
    groups = finetuning_parameter_groups(model, 1e-3, 0.05)
    assert {id(p) for g in groups for p in g["params"]} == {id(model.classifier.weight), id(model.classifier.bias)}
    with pytest.raises(ValueError, match="layer_decay"):
        finetuning_parameter_groups(model, 1e-3, 0.05, layer_decay=0.0)


def test_trainer_optimizer_keeps_layer_decay_through_the_schedule(tmp_path):
    model = DinoForImageClassification(tiny_config(num_labels=2))
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.05, warmup_steps=2, max_steps=10, report_to=[]
    )
    trainer = DinoFinetuningTrainer(model=model, args=args, layer_decay=0.5)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    scales = [g["lr_scale"] for g in trainer.optimizer.param_groups]
    assert min(scales) == pytest.approx(0.5**4) and max(scales) == 1.0
    for _ in range(5):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    top = max(lrs)
    assert 0 < top < 1e-3  # past the warm-up, on the cosine
    for lr, scale in zip(lrs, scales):
        assert lr == pytest.approx(top * scale)


def _jpeg(color, size=(40, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_classification_transform_crops_and_skips_bad_records():
    batch = {"image": [_jpeg((255, 0, 0)), {"bytes": b"not an image", "path": "bad.jpg"}, _jpeg((0, 0, 255))],
             "label": [3, 1, 7]}  # fmt: skip
    evaluation = ClassificationTransform("image", "label", 16, train=False, mean=(0.5,) * 3, std=(0.5,) * 3)
    out = evaluation(batch)
    assert out["pixel_values"].shape == (2, 3, 16, 16) and out["labels"].tolist() == [3, 7]
    assert evaluation.stats.skipped == 1 and evaluation.stats.first_skipped_ids == ["bad.jpg"]
    # A uniform red image stays red after resize, crop and normalisation: (1 - 0.5) / 0.5 = 1 in the red channel.
    torch.testing.assert_close(out["pixel_values"][0, 0], torch.ones(16, 16), atol=0.02, rtol=0)
    train = ClassificationTransform("image", "label", 16, train=True)
    assert train(batch)["pixel_values"].shape == (2, 3, 16, 16)


def test_classification_metrics_against_definition():
    logits = np.array(
        [[0.1, 0.9, 0.0, 0.0, 0.0, 0.0], [0.8, 0.1, 0.05, 0.03, 0.01, 0.01], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]]
    )
    labels = np.array([1, 2, 0])
    metrics = classification_metrics(mock.Mock(predictions=logits, label_ids=labels))
    # top-1: only the first is right; top-5: the third's label (0) is its 6th choice.
    assert metrics == {"top1": pytest.approx(100 / 3), "top5": pytest.approx(200 / 3)}


def test_load_classifier_keeps_only_the_head_random(tmp_path):
    torch.manual_seed(0)
    backbone = DinoViTModel(tiny_config())
    backbone.save_pretrained(tmp_path / "backbone")
    model = load_classifier(str(tmp_path / "backbone"), {0: "a", 1: "b"}, drop_path_rate=0.1)
    assert model.config.id2label == {0: "a", 1: "b"} and model.config.drop_path_rate == 0.1
    torch.testing.assert_close(model.dino.embeddings.cls_token, backbone.embeddings.cls_token, rtol=0, atol=0)

    # A training run gives its teacher backbone.
    run = DinoForSelfDistillation(tiny_config(out_dim=32, head_hidden_dim=16, head_bottleneck_dim=8))
    with torch.no_grad():
        run.teacher.backbone.embeddings.cls_token.fill_(0.5)
    run.save_pretrained(tmp_path / "run")
    model = load_classifier(str(tmp_path / "run"), {0: "a", 1: "b", 2: "c"})
    assert torch.all(model.dino.embeddings.cls_token == 0.5) and model.config.num_labels == 3

    # A checkpoint whose backbone does not fit would leave it random: refused.
    DinoViTModel(tiny_config(hidden_size=64)).save_pretrained(tmp_path / "other")
    with pytest.raises(MissingWeightsError, match="encoder.layer.0"):
        load_classifier(str(tmp_path / "other"), {0: "a", 1: "b"}, hidden_size=32)


def _finetune(backbone, output_dir, cache_dir, extra=()):
    options = {"train_per_class": 30, "validation_per_class": 20, "num_shards": 2, "seed": 1, "cache_dir": cache_dir}
    argv = [
        "--model_name_or_path", str(backbone), "--output_dir", str(output_dir), "--dataset_name", "embedded",
        "--embedded_options", json.dumps(options), "--num_train_epochs", "10", "--per_device_train_batch_size", "32",
        "--base_learning_rate", "0.016", "--warmup_epochs", "0.5", "--num_workers", "0", "--save_strategy", "no",
        "--eval_strategy", "no", "--logging_steps", "100", "--seed", "0", *extra,
    ]  # fmt: skip
    assert finetune_main(argv) is None  # a console script exits with main()'s value
    return json.loads((Path(output_dir) / "finetune_summary.json").read_text())["metrics"]


def _record_training(monkeypatch, hub):
    """Put the start and end of `Trainer.train` on the fake Hub's timeline."""
    original = DinoFinetuningTrainer.train

    def train(self, *args, **kwargs):
        hub.record("train")
        output = original(self, *args, **kwargs)
        hub.record("trained")
        return output

    monkeypatch.setattr(DinoFinetuningTrainer, "train", train)


def test_finetune_pretrained_beats_random_and_publishes(tmp_path, monkeypatch, caplog, capfd):
    pretrained = DinoViTModel.from_pretrained(PRETRAINED)
    torch.manual_seed(0)
    random_backbone = DinoViTModel(pretrained.config)
    save_model_with_processor(random_backbone, tmp_path / "random")
    cache = str(tmp_path / "embedded")
    hub = FakeHub(monkeypatch, user="someone")
    _record_training(monkeypatch, hub)
    tuned = _finetune(PRETRAINED, tmp_path / "tuned", cache, ["--push_to_hub", "--hub_token", SECRET])
    # The same publishing as pretraining: login checked and repository created before training, upload after.
    assert hub.events == ["whoami", "create_repo", "train", "trained", "upload_folder"]
    assert set(hub.tokens) == {SECRET} and hub.created["repo_id"] == "someone/tuned"
    scratch = _finetune(tmp_path / "random", tmp_path / "scratch", cache)
    top1, scratch_top1 = tuned["eval_top1"], scratch["eval_top1"]
    # Measured over seeds 0-3 (docs/finetuning.md): pretrained 49-60%, random 27-31%, margin 18-31 points.
    assert top1 >= scratch_top1 + 10, (top1, scratch_top1)

    # The published folder: pipeline-ready, with the shared card builder's card, without training checkpoints and
    # without the token anywhere.
    uploaded = hub.uploaded["files"]
    assert "README.md" in uploaded and not [name for name in uploaded if name.startswith(("checkpoint-", "runs"))]
    card = ModelCard((tmp_path / "tuned" / "README.md").read_text())
    assert card.data.pipeline_tag == "image-classification" and f"{top1:.4g}" in card.text
    assert card.data.to_dict()["model-index"][0]["results"][0]["metrics"][0]["value"] == round(top1, 2)
    assert 'model="someone/tuned"' in card.text and "| hub_token | `<HUB_TOKEN>` |" in card.text
    written = [p for p in (tmp_path / "tuned").rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert written == [] and not [name for name, data in uploaded.items() if SECRET.encode() in data]
    captured = capfd.readouterr()
    assert SECRET not in caplog.text and SECRET not in captured.out + captured.err
    classify = pipeline("image-classification", model=str(tmp_path / "tuned"), device="cpu")
    predictions = classify(Image.new("RGB", (64, 64), (200, 200, 200)), top_k=2)
    assert predictions[0]["label"] in DinoConfig.from_pretrained(tmp_path / "tuned").label2id


@pytest.mark.parametrize("fail", ["whoami", "create_repo"])
def test_a_login_or_repository_failure_stops_finetuning_before_training(tmp_path, monkeypatch, fail):
    hub = FakeHub(monkeypatch, fail=fail, secret=SECRET)
    _record_training(monkeypatch, hub)
    with pytest.raises(HubPublishingError, match="--push_to_hub") as error:
        _finetune(PRETRAINED, tmp_path / "tuned", str(tmp_path / "embedded"), ["--push_to_hub", "--hub_token", SECRET])
    assert "train" not in hub.events and SECRET not in str(error.value)
