"""`dino-hf-semantic-segmentation` (`dino_hf.cli.semantic_segmentation`): figures, the saved segmenter, and the push
(login checked before any work, the token written nowhere). Only the `HfApi` boundary is faked."""

import json

import pytest

import dino_hf.cli.semantic_segmentation as cli
from dino_hf.evaluation.segmentation import FrozenFeatureSegmenter
from dino_hf.publishing import HubPublishingError
from dino_hf.testing_utils import FakeHub


SECRET = "hf_dinoSecretToken0123456789abcdefXYZ"


def arguments(model_folder, tmp_path, *extra):
    options = {"train_per_class": 2, "validation_per_class": 1, "num_shards": 1, "cache_dir": str(tmp_path / "data")}
    return [
        "--model_name_or_path",
        str(model_folder),
        "--embedded_options",
        json.dumps(options),
        "--epochs",
        "2",
        "--device",
        "cpu",
        *extra,
    ]


def test_figures_of_the_model_and_of_a_random_network_and_the_saved_segmenter(tiny_model_folder, tmp_path, capsys):
    out = tmp_path / "seg"
    figures = cli.run(
        arguments(tiny_model_folder, tmp_path, "--compare_random_init", "--output_dir", str(out), "--output_file",
                  str(tmp_path / "figures.json"))
    )  # fmt: skip
    assert set(figures) == {"model", "random_init", "num_labels", "class_names"} and figures["num_labels"] == 11
    assert 0.0 <= figures["model"]["mean_iou"] <= 1.0 and len(figures["model"]["per_category_iou"]) == 11
    assert json.loads((tmp_path / "figures.json").read_text())["class_names"][:2] == ["background", "disk"]
    printed = capsys.readouterr().out
    assert "| pretrained |" in printed and "| random initialisation |" in printed and "Per-class IoU" in printed
    segmenter = FrozenFeatureSegmenter.from_pretrained(out)
    assert segmenter.settings["image_size"] == 32 and segmenter.settings["mean"] == [0.5] * 3
    assert segmenter.settings["random_init_figures"]["mean_iou"] == figures["random_init"]["mean_iou"]
    card = (out / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card and "randomly initialised backbone" in card
    assert "name: mIoU" in card and f"value: {round(100 * figures['model']['mean_iou'], 2)}" in card  # model-index
    assert "](segmentation_examples.png)" in card and (out / "segmentation_examples.png").is_file()


def test_push_checks_the_login_first_and_writes_the_token_nowhere(tiny_model_folder, tmp_path, monkeypatch, capfd):
    hub = FakeHub(monkeypatch, user="alice", secret=SECRET)
    real = cli.frozen_feature_segmentation

    def recorded(*args, **kwargs):
        hub.record("train")
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "frozen_feature_segmentation", recorded)
    out = tmp_path / "dino-seg"
    cli.run(arguments(tiny_model_folder, tmp_path, "--output_dir", str(out), "--push_to_hub", "--hub_token", SECRET))
    assert hub.events == ["whoami", "create_repo", "train", "upload_folder"]
    assert hub.created["repo_id"] == "alice/dino-seg" and hub.uploaded["repo_id"] == "alice/dino-seg"
    assert hub.uploaded["commit_message"] == "Upload a DINO frozen-feature segmentation head"
    assert {"README.md", "config.json", "model.safetensors", "segmentation_head.safetensors"} <= set(
        hub.uploaded["files"]
    )
    assert all(token == SECRET for token in hub.tokens)
    assert not [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    captured = capfd.readouterr()
    assert SECRET not in captured.out and SECRET not in captured.err


def test_a_refused_login_fails_before_any_work(tiny_model_folder, tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch, fail="whoami", secret=SECRET)
    monkeypatch.setattr(cli, "frozen_feature_segmentation", lambda *a, **k: hub.record("train"))
    with pytest.raises(HubPublishingError, match="could not check the Hub login") as error:
        cli.run(
            arguments(tiny_model_folder, tmp_path, "--output_dir", str(tmp_path / "o"), "--push_to_hub",
                      "--hub_token", SECRET)
        )  # fmt: skip
    assert hub.events == ["whoami"] and SECRET not in str(error.value)  # the server's message, scrubbed
    with pytest.raises(SystemExit):
        cli.run(arguments(tiny_model_folder, tmp_path, "--push_to_hub"))  # nothing to upload without --output_dir
