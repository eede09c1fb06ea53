"""Copy detection: GeM and the descriptor by hand, the reference's PCA whitening, the Copydays AP over the top-k,
matching copies to originals, and the CLI on generated data."""

import json

import numpy as np
import pytest
import torch

from dino_hf import DinoViTModel
from dino_hf.evaluation.copy_detection import (
    PCAWhitening,
    copy_detection_descriptor,
    copy_detection_map,
    gem,
    match_originals,
)
from dino_hf.testing_utils import tiny_config


def test_gem_by_hand():
    tokens = torch.tensor([[[1.0, 2.0, -5.0], [3.0, 0.0, -1.0]]])  # (1 image, 2 tokens, 3 channels)
    pooled = gem(tokens, p=4)
    # Channel 0: ((1 + 81) / 2)^(1/4); channel 1: 0 is clamped to 1e-6, so ((16 + ~0) / 2)^(1/4); channel 2: all
    # negative values clamp to 1e-6.
    torch.testing.assert_close(pooled, torch.tensor([[41.0**0.25, 8.0**0.25, 1e-6]]))
    torch.testing.assert_close(gem(tokens.abs(), p=1), tokens.abs().mean(dim=1))  # p = 1: the mean
    assert torch.allclose(gem(tokens.abs().double(), p=32), tokens.abs().amax(dim=1).double(), rtol=0.03)  # ~max


def test_descriptor_is_cls_then_gem_of_the_last_block():
    model = DinoViTModel(tiny_config()).eval()
    pixels = torch.randn(2, 3, 32, 32)
    descriptor = copy_detection_descriptor(model, pixels)
    (last,) = model.get_intermediate_layers(pixels, n=1)  # the reference's features: last block, final LayerNorm
    assert descriptor.shape == (2, 128)
    torch.testing.assert_close(descriptor[:, :64], last[:, 0])
    torch.testing.assert_close(descriptor[:, 64:], last[:, 1:].clamp(min=1e-6).pow(4).mean(1).pow(0.25))


def test_pca_whitening_is_the_reference_pca():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(200, 6, generator=generator) @ torch.randn(6, 6, generator=generator)
    features = features - features.mean(0)  # centered, so the second moment is the covariance
    whitening = PCAWhitening.fit(features)
    whitened = whitening(features)
    torch.testing.assert_close(whitened.T @ whitened / 200, torch.eye(6), atol=1e-4, rtol=0)
    # Largest-variance direction first; `dim` keeps the first ones.
    reduced = PCAWhitening.fit(features, dim=2)
    torch.testing.assert_close(reduced(features), whitened[:, :2], atol=1e-4, rtol=0)
    # The reference centres by the mean but takes the eigenvectors of the uncentered second moment X^T X / n.
    shifted = features + 3.0
    fitted = PCAWhitening.fit(shifted)
    eigenvalues, eigenvectors = np.linalg.eigh((shifted.double().T @ shifted.double() / 200).numpy())
    top = eigenvectors[:, -1] / eigenvalues[-1] ** 0.5
    direction = fitted.projection[0].double().numpy()
    assert np.allclose(np.abs(direction), np.abs(top), atol=1e-5)
    torch.testing.assert_close(fitted.mean, shifted.mean(0))


def test_copydays_ap_over_the_top_k():
    database = torch.eye(4)
    queries = torch.tensor([[1.0, 0.2, 0.1, 0.0], [0.1, 0.0, 0.3, 1.0]])
    # Query 0: positives 0 and 2 at ranks 0 and 2 -> (1 + (1/2 + 2/3) / 2) / 2. Query 1: positive 1 at rank 3.
    mean_ap, aps = copy_detection_map(queries, database, [[0, 2], [1]], top_k=20)
    np.testing.assert_allclose(aps, [(1 + (1 / 2 + 2 / 3) / 2) / 2, (0 + 1 / 4) / 2])
    assert mean_ap == pytest.approx(aps.mean())
    _, truncated = copy_detection_map(queries, database, [[0, 2], [1]], top_k=2)
    np.testing.assert_allclose(truncated, [0.5, 0.0])  # positives beyond the top 2 are not found


def test_copies_match_their_originals():
    originals = ["0001.jpg", "0002.jpg", "00021.jpg"]
    assert match_originals(["0001.jpg", "0002_rot.png", "0003.jpg"], originals) == [[0], [1], []]
    assert match_originals(["2000.jpg", "0002x.jpg"], ["200000.jpg", "200001.jpg", "0002.jpg"], 4) == [[0, 1], [2]]


def test_copy_detection_cli_on_generated_data(tiny_model_folder, tmp_path):
    from dino_hf.cli.copy_detection import run as main

    results = main(
        ["--model_name_or_path", str(tiny_model_folder), "--generate_demo_data", str(tmp_path / "data"),
         "--imsize", "48", "--output_file", str(tmp_path / "figures.json")]
    )  # fmt: skip
    assert set(results) == {"crops/50", "jpegqual/10", "strong", "all"}
    assert results["jpegqual/10"] > 0.9  # a JPEG copy is nearly its original, even with random features
    assert all(0.0 <= value <= 1.0 for value in results.values())
    assert json.loads((tmp_path / "figures.json").read_text()) == pytest.approx(results)
