"""Feature extraction: the evaluation image processor, the transformers pipeline, and feature files."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, pipeline

import dino_hf  # noqa: F401  (registers the "dino" model type for the pipeline)
from dino_hf import DinoForSelfDistillation, DinoViTModel
from dino_hf.evaluation import (
    dino_image_processor,
    extract_features,
    load_backbone,
    load_features,
    save_model_with_processor,
)
from dino_hf.testing_utils import tiny_config


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def reference_preprocessing(image: Image.Image, resize: int, crop: int) -> np.ndarray:
    """Resize(resize, bicubic) -> CenterCrop(crop) -> ToTensor -> Normalize(ImageNet), written out with PIL/numpy."""
    width, height = image.size
    scale = resize / min(width, height)
    size = (resize, int(resize * height / width)) if width <= height else (int(resize * width / height), resize)
    assert abs(size[0] - width * scale) < 1 and abs(size[1] - height * scale) < 1
    resized = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    array = np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255.0
    array = (array - np.array([0.485, 0.456, 0.406], dtype=np.float32)) / np.array(
        [0.229, 0.224, 0.225], dtype=np.float32
    )
    return array.transpose(2, 0, 1)


def test_processor_is_the_paper_evaluation_preprocessing_and_reloads_without_torchvision(tmp_path):
    processor = dino_image_processor()
    assert processor.size["shortest_edge"] == 256 and processor.crop_size == {"height": 224, "width": 224}
    image = photo(300, 200)
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(pixels[0].numpy(), reference_preprocessing(image, 256, 224), rtol=0, atol=1e-5)

    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "BitImageProcessor" and saved["resample"] == 3
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    expected_class = "BitImageProcessorPil" if importlib.util.find_spec("torchvision") is None else "BitImageProcessor"
    assert type(loaded).__name__ == expected_class
    torch.testing.assert_close(loaded(image, return_tensors="pt")["pixel_values"], pixels, rtol=0, atol=1e-6)
    assert dino_image_processor(image_size=96).size["shortest_edge"] == 110  # 96 / 0.875, rounded


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    model = DinoViTModel(tiny_config()).eval()
    path = save_model_with_processor(model, tmp_path_factory.mktemp("dino-tiny"))
    return model, path


def test_image_feature_extraction_pipeline_returns_the_dino_feature(saved_model):
    model, path = saved_model
    extractor = pipeline("image-feature-extraction", model=str(path))
    assert type(extractor.model) is DinoViTModel
    assert type(extractor.image_processor).__name__.startswith("BitImageProcessor")
    image = photo(50, 40, seed=1)
    pixels = dino_image_processor(image_size=32)(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        direct = model(pixels)

    pooled = extractor(image, pool=True, return_tensors=True)
    assert pooled.shape == (1, 64)
    torch.testing.assert_close(pooled, direct.pooler_output, rtol=0, atol=1e-6)
    tokens = extractor(image, return_tensors=True)  # without pool: last_hidden_state, [CLS] first
    assert tokens.shape == (1, 17, 64)
    torch.testing.assert_close(tokens, direct.last_hidden_state, rtol=0, atol=1e-6)
    as_lists = extractor([image, photo(40, 60, seed=2)], pool=True)
    assert len(as_lists) == 2
    np.testing.assert_allclose(np.array(as_lists[0]), direct.pooler_output.numpy(), rtol=0, atol=1e-6)


def batches_with_ids(model_batches: int = 3):
    generator = torch.Generator().manual_seed(3)
    return [
        (torch.randn(4, 3, 32, 32, generator=generator), torch.arange(4) % 2, torch.arange(4) + 4 * i)
        for i in range(model_batches)
    ]


def test_extract_features_to_safetensors_with_progress_bar(saved_model, tmp_path, capsys):
    model, _ = saved_model
    batches = batches_with_ids()
    out = extract_features(model, batches, tmp_path / "features.safetensors")
    progress = capsys.readouterr().err
    assert "Extracting features" in progress and "3/3" in progress
    with torch.no_grad():
        expected = torch.cat([model(x).pooler_output for x, _, _ in batches])
    torch.testing.assert_close(out["features"], expected, rtol=0, atol=1e-6)
    loaded = load_features(tmp_path / "features.safetensors")
    assert torch.equal(loaded["features"], out["features"])
    assert loaded["labels"].tolist() == [0, 1] * 6 and loaded["ids"].tolist() == list(range(12))

    normalized = extract_features(model, batches, normalize=True, progress=False)
    torch.testing.assert_close(normalized["features"].norm(dim=1), torch.ones(12))
    assert normalized["ids"] == list(range(12))
    linear = extract_features(model, batches, n_last_blocks=2, avgpool_patchtokens=True, progress=False)
    assert linear["features"].shape == (12, 3 * 64)


def test_extract_features_to_parquet_with_string_ids(saved_model, tmp_path):
    model, _ = saved_model
    batches = [
        {"pixel_values": x, "labels": y, "ids": [f"img_{i}" for i in ids.tolist()]}
        for x, y, ids in batches_with_ids(2)
    ]
    out = extract_features(model, batches, tmp_path / "features.parquet", progress=False)
    loaded = load_features(tmp_path / "features.parquet")
    assert torch.equal(loaded["features"], out["features"]) and loaded["features"].shape == (8, 64)
    assert loaded["ids"] == [f"img_{i}" for i in range(8)] and loaded["labels"].tolist() == [0, 1] * 4
    with pytest.raises(ValueError, match="integer ids only"):
        extract_features(model, batches, tmp_path / "features.safetensors", progress=False)
    with pytest.raises(ValueError, match="Got 4 labels for 8 images"):
        extract_features(
            model, [(x, y if i == 0 else None) for i, (x, y, _) in enumerate(batches_with_ids(2))], progress=False
        )


def test_load_backbone_from_a_backbone_folder_and_from_a_training_run(saved_model, tmp_path):
    model, path = saved_model
    pixels = torch.randn(2, 3, 32, 32)
    run = DinoForSelfDistillation(tiny_config())
    with torch.no_grad():
        for param in run.teacher.parameters():
            param.add_(1.0)  # teacher != student, so picking the wrong network fails
    run.save_pretrained(tmp_path / "run")
    with torch.no_grad():
        assert torch.equal(load_backbone(path)(pixels).pooler_output, model(pixels).pooler_output)
        teacher = load_backbone(tmp_path / "run")
        assert type(teacher) is DinoViTModel and not teacher.training
        torch.testing.assert_close(
            teacher(pixels).pooler_output, run.teacher.backbone.eval()(pixels).pooler_output, rtol=0, atol=0
        )
