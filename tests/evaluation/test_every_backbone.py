"""Every evaluation takes every backbone the trainer trains: each CLI (and the pipeline) on a tiny ViT export and a
tiny ResNet export; attention maps, which only a ViT has, refuse a ResNet and say why."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import ResNetModel, pipeline

from dino_hf import DinoConfig, DinoForSelfDistillation, DinoViTModel
from dino_hf.data.synthetic import embedded_dataset_files
from dino_hf.evaluation import DinoFeatureExtractionPipeline, load_features, save_model_with_processor
from dino_hf.image_processing_dino import dino_image_processor
from dino_hf.testing_utils import tiny_config


FEATURE_SIZE = {"vit": 64, "resnet": 32}


def tiny_backbone(kind):
    torch.manual_seed(0)
    if kind == "vit":
        return DinoViTModel(tiny_config())
    config = DinoConfig.from_preset(  # two stages: a 4 x 4 map at 32 px (stride 8)
        "resnet50", resnet_embedding_size=8, resnet_hidden_sizes=[16, 32], resnet_depths=[1, 1],
        out_dim=32, head_hidden_dim=16, head_bottleneck_dim=8,
    )  # fmt: skip
    return DinoForSelfDistillation(config).export_teacher_backbone()


@pytest.fixture(scope="module", params=["vit", "resnet"])
def export(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"export_{request.param}")
    backbone = tiny_backbone(request.param)
    assert isinstance(backbone, ResNetModel) == (request.param == "resnet")
    save_model_with_processor(backbone, folder, dino_image_processor(image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3))
    return request.param, folder


@pytest.fixture(scope="module")
def dataset_folder(tmp_path_factory):
    files = embedded_dataset_files(
        tmp_path_factory.mktemp("shapes"), train_per_class=4, validation_per_class=2, num_shards=2
    )
    return str(Path(files["train"][0]).parents[1])


def run_knn(kind, model, data, tmp_path):
    from dino_hf.cli.knn_eval import run

    results = run(["--model_name_or_path", model, "--dataset_name", data, "--ks", "5", "--num_workers", "0",
                   "--max_train_samples", "30", "--max_eval_samples", "10"])  # fmt: skip
    assert set(results) == {5} and 0.0 <= results[5]["top1"] <= 100.0


def run_linear(kind, model, data, tmp_path):
    from dino_hf.cli.linear_eval import run

    flags = ["--model_name_or_path", model, "--dataset_name", data, "--num_workers", "0", "--batch_size", "8",
             "--epochs", "1", "--lr", "0.01", "0.1", "--max_train_samples", "24", "--max_eval_samples", "10"]  # fmt: skip
    online = run(flags)
    cached = run([*flags, "--features_dir", str(tmp_path / "features")])
    assert len(online["heads"]) == len(cached["heads"]) == 2
    stored = load_features(tmp_path / "features" / "train.parquet")
    width = FEATURE_SIZE[kind] * (2 if kind == "vit" else 1)  # the tiny ViT's 2 blocks' [CLS]; a ResNet's pool
    assert stored["features"].shape == (24, width)


def run_extract_features(kind, model, data, tmp_path):
    from dino_hf.cli.extract_features import run

    path = run(["--model_name_or_path", model, "--dataset_name", data, "--split", "validation", "--num_workers", "0",
                "--output_file", str(tmp_path / "f.parquet"), "--normalize"])  # fmt: skip
    assert load_features(path)["features"].shape == (20, FEATURE_SIZE[kind])


def run_retrieval(kind, model, data, tmp_path):
    from dino_hf.cli.retrieval import run

    figures = run(["--model_name_or_path", model, "--generate_demo_data", str(tmp_path / "r"), "--imsize", "32",
                   "--multiscale"])  # fmt: skip
    assert all(0.0 < value <= 1.0 for value in figures["mAP"].values())


def run_copy_detection(kind, model, data, tmp_path):
    from dino_hf.cli.copy_detection import run

    results = run(["--model_name_or_path", model, "--generate_demo_data", str(tmp_path / "c"), "--imsize", "48"])
    assert results["jpegqual/10"] > 0.5 and all(0.0 <= value <= 1.0 for value in results.values())


def run_video_segmentation(kind, model, data, tmp_path):
    from dino_hf.cli.video_segmentation import run

    figures = run(["--model_name_or_path", model, "--generate_demo_data", str(tmp_path / "v"), "--output_dir",
                   str(tmp_path / "out"), "--short_side", "64"])  # fmt: skip
    assert set(figures) == {"J&F-mean", "J-mean", "F-mean"}
    assert len(list((tmp_path / "out" / "shapes").glob("*.png"))) == 12


def run_finetune(kind, model, data, tmp_path):
    from dino_hf.cli.finetune import main

    main(["--model_name_or_path", model, "--output_dir", str(tmp_path / "ft"), "--dataset_name", data,
          "--max_steps", "2", "--per_device_train_batch_size", "8", "--num_workers", "0", "--save_strategy", "no",
          "--eval_strategy", "no", "--report_to", "none"])  # fmt: skip
    summary = json.loads((tmp_path / "ft" / "finetune_summary.json").read_text())
    assert "eval_top1" in summary["metrics"]


def run_pipeline(kind, model, data, tmp_path):
    image = Image.new("RGB", (40, 36), (200, 30, 90))
    extractor = pipeline("image-feature-extraction", model=model, pipeline_class=DinoFeatureExtractionPipeline)
    feature = extractor(image, pool=True, return_tensors=True)
    assert feature.shape == (1, FEATURE_SIZE[kind])  # a flat vector, the DINO feature, for a ResNet too
    card_feature = "pooler_output.flatten(1)" if kind == "resnet" else "pooler_output"
    with torch.no_grad():
        backbone = extractor.model.eval()
        inputs = extractor.image_processor(images=image, return_tensors="pt")
        expected = backbone(**inputs).pooler_output
        expected = expected.flatten(1) if card_feature.endswith("flatten(1)") else expected
    torch.testing.assert_close(feature, expected)


def run_visualize_attention(kind, model, data, tmp_path):
    from dino_hf.cli.visualize_attention import run

    flags = ["--model_name_or_path", model, "--output_dir", str(tmp_path), "--image_size", "32"]
    if kind == "vit":
        assert run(flags).is_file()
        return
    with pytest.raises(SystemExit, match="ResNet.*has none"):  # attention maps need a ViT: refused with the reason
        run(flags)


CLIS = [run_knn, run_linear, run_extract_features, run_retrieval, run_copy_detection, run_video_segmentation,
        run_finetune, run_pipeline, run_visualize_attention]  # fmt: skip


@pytest.mark.parametrize("cli", CLIS, ids=lambda f: f.__name__.removeprefix("run_"))
def test_every_evaluation_takes_a_vit_and_a_resnet(cli, export, dataset_folder, tmp_path):
    kind, folder = export
    cli(kind, str(folder), dataset_folder, tmp_path)
