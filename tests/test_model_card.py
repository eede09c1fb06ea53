"""Model cards: one builder for the pretrained backbone's and the fine-tuned classifier's cards, metadata naming only
Hub repositories, a model-index of what was measured, every setting listed with secrets masked."""

from huggingface_hub import ModelCard

from dino_hf import DinoConfig
from dino_hf.model_card import (
    finetuning_card,
    metrics_table,
    pretraining_card,
    segmentation_card,
    settings_details,
)
from dino_hf.testing_utils import tiny_config


SECRET = "hf_dinoSecretToken0123456789abcdefXYZ"


def test_pretraining_card_metadata_names_the_hub_dataset_and_the_base_model():
    summary = {
        "arch": "vit_small",
        "dataset_name": "timm/imagenet-1k-wds",
        "base_model": "facebook/dino-vits16",
        "hub_model_id": "alice/dino",
        "args": {"hub_token": SECRET, "lr": 0.0005},
    }
    card = pretraining_card(tiny_config(), summary)
    data = card.data.to_dict()
    assert data["datasets"] == ["timm/imagenet-1k-wds"] and data["base_model"] == "facebook/dino-vits16"
    assert data["pipeline_tag"] == "image-feature-extraction" and data["model_name"] == "dino"
    assert "model-index" not in data  # no k-NN measured
    assert SECRET not in str(card) and "<HUB_TOKEN>" in card.text
    from_url = pretraining_card(tiny_config(), {**summary, "base_model": "https://dl.fbaipublicfiles.com/dino/x.pth"})
    assert "base_model" not in from_url.data.to_dict() and "dl.fbaipublicfiles.com" in from_url.text


def test_finetuning_card_through_the_same_builder():
    config = DinoConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        num_labels=3, n_last_blocks=2)  # fmt: skip
    settings = {
        "model_name_or_path": "facebook/dino-vits16",
        "dataset_name": "my/flowers",
        "eval_split": "validation",
        "num_train_epochs": 100.0,
        "max_steps": -1,
        "per_device_train_batch_size": 64,
        "gradient_accumulation_steps": 1,
        "base_learning_rate": 5e-4,
        "weight_decay": 0.05,
        "warmup_epochs": 5.0,
        "label_smoothing": 0.1,
        "layer_decay": 1.0,
        "drop_path_rate": 0.1,
        "hub_token": SECRET,
    }
    card = finetuning_card(config, settings, {"eval_top1": 87.654, "eval_loss": 0.5}, repo_id="alice/dino-flowers")
    reloaded = ModelCard(str(card))
    data = reloaded.data.to_dict()
    assert data["license"] == "apache-2.0" and data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-classification" and data["datasets"] == ["my/flowers"]
    assert data["base_model"] == "facebook/dino-vits16"
    (entry,) = data["model-index"]
    assert entry["name"] == "dino-flowers"
    (metric,) = entry["results"][0]["metrics"]
    assert metric == {"name": "top-1", "type": "accuracy", "value": 87.65}
    assert entry["results"][0]["dataset"] == {"name": "my/flowers", "type": "my/flowers", "split": "validation"}
    assert "| eval_top1 | 87.65 |" in card.text and "| label_smoothing | `0.1` |" in card.text
    assert 'pipeline("image-classification", model="alice/dino-flowers")' in card.text
    assert "on 2 block(s) of [CLS] tokens" in card.text and "3 classes" in card.text
    assert SECRET not in str(card) and "| hub_token | `<HUB_TOKEN>` |" in card.text
    local = finetuning_card(
        config, {**settings, "model_name_or_path": "/tmp/run/export", "dataset_name": "embedded"}, {}
    )
    assert {"base_model", "datasets", "model-index"}.isdisjoint(local.data.to_dict())


def test_shared_sections():
    assert (
        metrics_table({"loss": 1.23456, "step": 3}) == "| metric | value |\n|---|---|\n| loss | 1.235 |\n| step | 3 |"
    )
    assert "| (none) | |" in metrics_table({})
    details = settings_details({"b": 1, "a_token": SECRET})
    assert details.index("| a_token | `<A_TOKEN>` |") < details.index("| b | `1` |") and SECRET not in details


def test_segmentation_card_through_the_same_builder():
    figures = {"mean_iou": 0.301, "overall_accuracy": 0.906, "per_category_iou": [0.958, 0.395]}
    settings = {
        "id2label": {"0": "background", "1": "disk"},
        "image_size": 64,
        "backbone": "facebook/dino-vits16",
        "out_features": ["stage11", "stage12"],
        "figures": figures,
    }
    card = segmentation_card(settings, "embedded", {"Predictions": "segmentation_examples.png"}, "alice/seg")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-segmentation" and data["base_model"] == "facebook/dino-vits16"
    assert "datasets" not in data and data["model-index"][0]["name"] == "seg"  # "embedded" is no Hub dataset
    result = data["model-index"][0]["results"][0]
    assert result["metrics"][0]["name"] == "mIoU" and result["metrics"][0]["value"] == 30.1
    assert "| pretrained backbone | 30.1 | 90.6 |" in card.text and "| disk | 39.5 |" in card.text
    assert "randomly initialised" not in card.text and "![Predictions](segmentation_examples.png)" in card.text
    assert 'from_pretrained("alice/seg")' in card.text and "stage11, stage12" in card.text
    baseline = segmentation_card({**settings, "random_init_figures": {**figures, "mean_iou": 0.158}}, "embedded")
    assert "| same head, randomly initialised backbone | 15.8 | 90.6 |" in baseline.text
