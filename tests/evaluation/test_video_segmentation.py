"""Video segmentation: J and F against their definitions, the propagation step by hand, the DAVIS palette and PNGs,
tracking on a generated video, and the CLI."""

import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dino_hf import DinoViTModel
from dino_hf.evaluation.synthetic_datasets import generate_video_demo
from dino_hf.evaluation.video_segmentation import (
    PropagationConfig,
    boundary_f_measure,
    boundary_map,
    davis_frame_size,
    davis_palette,
    evaluate_video,
    neighbourhood_mask,
    propagate_labels,
    read_label_png,
    region_similarity,
    segment_davis,
    summarise,
    write_indexed_png,
)
from dino_hf.testing_utils import tiny_config


def test_region_similarity_by_hand():
    prediction, truth = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    prediction[0:2, 0:2] = True  # 4 pixels
    truth[1:3, 0:2] = True  # 4 pixels, 2 shared
    assert region_similarity(prediction, truth) == pytest.approx(2 / 6)
    assert region_similarity(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0  # both empty
    assert region_similarity(prediction, np.zeros((4, 4))) == 0.0


def test_boundary_map_by_hand():
    mask = np.zeros((5, 5), bool)
    mask[1:3, 1:3] = True
    # A pixel is on the boundary when it differs from its east, south or south-east neighbour.
    expected = np.zeros((5, 5), bool)
    expected[0, 0] = True  # south-east of it is inside
    expected[0, 1:3] = True  # south of them is inside
    expected[1:3, 0] = True  # east of them is inside
    expected[1:3, 2] = True  # inside, east is outside
    expected[2, 1] = True  # inside, south is outside
    np.testing.assert_array_equal(boundary_map(mask), expected)
    assert not boundary_map(np.ones((3, 3), bool)).any()  # a mask covering the frame has no boundary


def _brute_force_f(prediction, truth, radius):
    """The definition: a boundary pixel is matched when a boundary pixel of the other mask is within `radius`."""
    predicted, annotated = np.argwhere(boundary_map(prediction)), np.argwhere(boundary_map(truth))
    if len(predicted) == 0 or len(annotated) == 0:
        return float(len(predicted) == len(annotated))
    distances = np.linalg.norm(predicted[:, None] - annotated[None], axis=-1)
    precision = (distances.min(axis=1) <= radius).mean()
    recall = (distances.min(axis=0) <= radius).mean()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_boundary_f_measure_against_its_definition():
    truth = np.zeros((40, 40), bool)
    truth[10:30, 10:30] = True
    assert boundary_f_measure(truth, truth) == 1.0
    shifted = np.roll(truth, 1, axis=1)  # tolerance ceil(0.008 * 56.6) = 1 pixel
    assert boundary_f_measure(shifted, truth) == 1.0
    far = np.roll(truth, 3, axis=1)
    # Shifted by 3: the top and bottom edges still match within 1 pixel, the left and right ones do not.
    assert 0.0 < boundary_f_measure(far, truth) < 1.0
    assert boundary_f_measure(far, truth) == pytest.approx(_brute_force_f(far, truth, 1))
    assert boundary_f_measure(np.zeros_like(truth), truth) == 0.0
    assert boundary_f_measure(np.zeros_like(truth), np.zeros_like(truth)) == 1.0
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.random((30, 30)) < 0.3, rng.random((30, 30)) < 0.3
        assert boundary_f_measure(a, b, bound_th=2) == pytest.approx(_brute_force_f(a, b, 2))


def test_evaluate_video_skips_first_and_last_frames():
    truth = [np.array([[1, 0], [2, 0]])] * 4
    predictions = [truth[0], np.array([[1, 1], [2, 0]]), truth[0], np.zeros((2, 2), int)]
    scores = evaluate_video(predictions, truth)  # frames 1 and 2 only
    assert scores[1]["J"] == pytest.approx((0.5 + 1.0) / 2) and scores[2]["J"] == 1.0
    assert summarise({"v": scores})["J-mean"] == pytest.approx((0.75 + 1.0) / 2)


def test_neighbourhood_mask_is_the_reference_loop():
    height, width, size = 4, 5, 1
    expected = torch.zeros(height, width, height, width)
    for i, j in itertools.product(range(height), range(width)):
        for p, q in itertools.product(range(2 * size + 1), range(2 * size + 1)):
            k, m = i - size + p, j - size + q
            if 0 <= k < height and 0 <= m < width:
                expected[i, j, k, m] = 1
    torch.testing.assert_close(neighbourhood_mask(height, width, size), expected.reshape(20, 20))


def test_propagation_step_by_hand():
    # Two context frames with two patches each; the target's patch 0 resembles source patches with label 0.
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    first = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    previous = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    first_labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # (C, P): patch 0 is class 0, patch 1 class 1
    previous_labels = torch.tensor([[0.5, 0.0], [0.5, 1.0]])
    labels = propagate_labels(target, [first, previous], [first_labels, previous_labels], topk=2, temperature=0.1)
    # Target patch 0: cosines 1.0 (first, p0), 0.6, 0.8 (previous, p0), 0.0: keeps e^10 and e^8.
    w = np.exp([10.0, 8.0]) / np.exp([10.0, 8.0]).sum()
    np.testing.assert_allclose(labels[:, 0].numpy(), [w[0] * 1 + w[1] * 0.5, w[1] * 0.5], rtol=1e-5)
    # Target patch 1: cosines 0.0, 0.8 (first, p1), 0.6, 1.0 (previous, p1): keeps e^10 and e^8.
    np.testing.assert_allclose(labels[:, 1].numpy(), [0.0, 1.0], rtol=1e-5)
    masked = propagate_labels(
        target, [first], [first_labels], topk=1, neighbourhood=torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    )
    np.testing.assert_allclose(masked.numpy(), [[0.0, 1.0], [1.0, 0.0]])  # only the other patch is allowed


def test_davis_palette_and_indexed_png(tmp_path):
    palette = davis_palette()
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[255].tolist() == [224, 224, 192]  # DAVIS's void colour
    labels = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    path = write_indexed_png(labels, tmp_path / "mask.png")
    with Image.open(path) as image:
        assert image.mode == "P" and image.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(read_label_png(path), labels)


def test_frame_size_is_the_reference_rule():
    assert davis_frame_size(480, 854) == (480, 832)
    assert davis_frame_size(854, 480) == (832, 480)
    assert davis_frame_size(100, 100) == (480, 448)


def test_propagation_tracks_moving_shapes(tmp_path):
    """A random tiny ViT (patch 8) on a generated video: two shapes of distinct colours moving over a noisy gradient.

    Random patch features separate the objects' colours from the background, so a correct propagation follows the
    objects; the first frame's mask left in place scores far lower (the objects move away from it).
    """
    root = generate_video_demo(tmp_path / "davis", num_frames=8, size=192)
    model = DinoViTModel(tiny_config()).eval()
    figures = segment_davis(model, root, tmp_path / "out", config=PropagationConfig(short_side=192))
    assert figures["J-mean"] > 0.8
    truth = [read_label_png(p) for p in sorted((root / "Annotations" / "480p" / "shapes").glob("*.png"))]
    predicted = [read_label_png(p) for p in sorted((tmp_path / "out" / "shapes").glob("*.png"))]
    per_object = evaluate_video(predicted, truth)
    assert all(scores["J"] > 0.8 for scores in per_object.values())
    assert summarise({"v": evaluate_video([truth[0]] * len(truth), truth)})["J-mean"] < 0.4  # not tracking
    with Image.open(tmp_path / "out" / "shapes" / "00005.png") as image:
        assert image.mode == "P" and image.size == (192, 192)


def test_video_segmentation_cli_on_generated_data(tiny_model_folder, tmp_path):
    from dino_hf.cli.video_segmentation import run as main

    figures = main(
        ["--model_name_or_path", str(tiny_model_folder), "--generate_demo_data", str(tmp_path / "data"),
         "--output_dir", str(tmp_path / "out"), "--short_side", "64", "--output_file", str(tmp_path / "f.json")]
    )  # fmt: skip
    assert set(figures) == {"J&F-mean", "J-mean", "F-mean"}
    assert len(list((tmp_path / "out" / "shapes").glob("*.png"))) == 12
    assert json.loads((tmp_path / "f.json").read_text()) == pytest.approx(figures)


def test_propagation_and_ranking_ignore_autocast():
    from dino_hf.evaluation.retrieval import evaluate_retrieval

    generator = torch.Generator().manual_seed(0)
    target, sources = torch.randn(6, 16, generator=generator), torch.randn(3, 6, 16, generator=generator)
    target, sources = torch.nn.functional.normalize(target, dim=1), torch.nn.functional.normalize(sources, dim=2)
    labels = [torch.rand(2, 6, generator=generator) for _ in range(3)]
    expected = propagate_labels(target, list(sources), labels, topk=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = propagate_labels(target, list(sources), labels, topk=3)
        ranks = evaluate_retrieval(target[:2], sources[0], [{"easy": [0]}, {"easy": [1]}]).ranks
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, expected)
    np.testing.assert_array_equal(
        ranks, evaluate_retrieval(target[:2], sources[0], [{"easy": [0]}, {"easy": [1]}]).ranks
    )


def test_void_pixels_are_left_out():
    truth = np.array([[1, 1, 255], [0, 0, 255]])
    prediction = np.array([[1, 1, 1], [0, 0, 1]])  # wrong only on void pixels
    assert region_similarity(prediction == 1, truth == 1, truth == 255) == 1.0
    assert region_similarity(prediction == 1, truth == 1) == pytest.approx(2 / 4)
    scores = evaluate_video([truth, prediction, truth], [truth] * 3)  # objects: 1 only, not 1..255
    assert list(scores) == [1] and scores[1]["J"] == 1.0
