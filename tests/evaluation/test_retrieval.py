"""Retrieval: the revisited AP with junk images on hand-computed cases, the protocols, multi-scale features, the two
dataset layouts and the CLI on generated data."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dino_hf import DinoViTModel
from dino_hf.evaluation.retrieval import (
    REFERENCE_SCALES,
    compute_ap,
    compute_map,
    evaluate_retrieval,
    global_features,
    load_retrieval_dataset,
    protocol_ground_truth,
)
from dino_hf.evaluation.synthetic_datasets import generate_retrieval_demo
from dino_hf.testing_utils import tiny_config


def test_ap_with_junk_by_hand():
    # Query 0's ranking; positives 2, 1, 6; junk 5, 3. Without the junk the order is 2 7 1 0 4 6: positives at 0, 2, 5.
    ranks = np.array([[5, 2, 7, 1, 3, 0, 4, 6]])
    mean_ap, aps, precision, _ = compute_map(ranks, [{"ok": [2, 1, 6], "junk": [5, 3]}], kappas=[1, 5, 10])
    # Trapezoids between precision j/r (1 at r=0) and (j+1)/(r+1), each 1/3 of recall wide.
    expected = (1.0 + (1 / 2 + 2 / 3) / 2 + (2 / 5 + 3 / 6) / 2) / 3
    assert mean_ap == pytest.approx(expected) and aps[0] == pytest.approx(expected)
    # mP@k: k capped at the last positive's 1-based rank (6): 1/1, 2/5, 3/6.
    np.testing.assert_allclose(precision, [1.0, 0.4, 0.5])


def test_ap_without_junk_and_missing_positives():
    assert compute_ap([0, 1], 2) == pytest.approx(1.0)
    assert compute_ap([1], 2) == pytest.approx((0 + 1 / 2) / 2 / 2)  # the second positive never retrieved
    ranks = np.array([[0, 1], [1, 0]])
    mean_ap, aps, _, _ = compute_map(ranks, [{"ok": [0]}, {"ok": []}])
    assert mean_ap == 1.0 and np.isnan(aps[1])  # a query without positives is left out


def test_easy_medium_hard_protocols_by_hand():
    gnd = [{"easy": [0], "hard": [1], "junk": [2]}]
    ranks = np.array([[3, 0, 2, 1]])
    results = {p: compute_map(ranks, protocol_ground_truth(gnd, p))[0] for p in ("easy", "medium", "hard")}
    assert results["easy"] == pytest.approx(0.25)  # 0 at rank 1 (junk 2 and hard 1 come after)
    assert results["medium"] == pytest.approx((0.25 + (1 / 2 + 2 / 3) / 2) / 2)  # 0 at 1, 1 at 3 - 1 junk = 2
    assert results["hard"] == pytest.approx(0.25)  # 1 at 3, minus junk 2 and easy 0 ranked before it


def test_evaluate_retrieval_ranks_by_cosine():
    database = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]])
    queries = torch.tensor([[0.1, 1.0]])
    result = evaluate_retrieval(queries, database, [{"easy": [1], "hard": [0], "junk": []}])
    np.testing.assert_array_equal(result.ranks, [[1, 2, 0]])  # cosines 0.995, 0.78, 0.0995
    medium = (1.0 + (1 / 2 + 2 / 3) / 2) / 2  # positives 1 and 0 at ranks 0 and 2
    hard = (0 / 1 + 1 / 2) / 2  # 0 at rank 2, minus the easy image 1 (junk here): rank 1 of 1 positive
    assert result.mean_ap == {"easy": 1.0, "medium": pytest.approx(medium), "hard": pytest.approx(hard)}


def test_multiscale_features_average_three_resized_inputs():
    model = DinoViTModel(tiny_config()).eval()
    pixels = torch.randn(2, 3, 64, 48)
    expected = []
    for scale in (1.0, 1 / math.sqrt(2), 0.5):
        resized = pixels if scale == 1 else F.interpolate(pixels, scale_factor=scale, mode="bilinear")
        height, width = resized.shape[-2] // 8 * 8, resized.shape[-1] // 8 * 8  # 45x33 -> 40x32 at 1/sqrt(2)
        expected.append(model(resized[..., :height, :width]).pooler_output)
    torch.testing.assert_close(
        global_features(model, pixels, REFERENCE_SCALES), F.normalize(torch.stack(expected).mean(0), dim=-1)
    )
    single = global_features(model, pixels)
    torch.testing.assert_close(single, F.normalize(model(pixels).pooler_output, dim=-1))
    # Each image is normalised on its own (the reference normalises its batch of one).
    torch.testing.assert_close(
        global_features(model, pixels[1:], REFERENCE_SCALES)[0], global_features(model, pixels, REFERENCE_SCALES)[1]
    )


def test_json_and_revisited_layouts_agree(tmp_path):
    plain = load_retrieval_dataset(generate_retrieval_demo(tmp_path / "plain"))
    with pytest.raises(ValueError, match="allow_unpickling"):
        load_retrieval_dataset(generate_retrieval_demo(tmp_path / "rev", revisited_name="roxford5k"), "roxford5k")
    revisited = load_retrieval_dataset(tmp_path / "rev", "roxford5k", allow_unpickling=True)
    assert [p.name for p in plain.query_paths] == [p.name for p in revisited.query_paths]
    assert [p.name for p in plain.database_paths] == [p.name for p in revisited.database_paths]
    for a, b in zip(plain.ground_truth, revisited.ground_truth):
        assert all(np.array_equal(a[k], b[k]) for k in ("easy", "hard", "junk"))
    assert len(plain.query_paths) == 4 and len(plain.database_paths) == 4 * 5 + 4
    assert revisited.query_boxes[0] == (0, 0, 64, 64)


def test_json_layout_rejects_unknown_names(tmp_path):
    root = generate_retrieval_demo(tmp_path)
    truth = json.loads((root / "ground_truth.json").read_text())
    truth["q00.jpg"]["easy"].append("missing.jpg")
    (root / "ground_truth.json").write_text(json.dumps(truth))
    with pytest.raises(ValueError, match="missing.jpg"):
        load_retrieval_dataset(root)


def test_retrieval_cli_on_generated_data(tiny_model_folder, tmp_path):
    from dino_hf.cli.retrieval import run as main

    figures = main(
        ["--model_name_or_path", str(tiny_model_folder), "--generate_demo_data", str(tmp_path / "data"), "--imsize", "32",
         "--multiscale", "--output_file", str(tmp_path / "figures.json")]
    )  # fmt: skip
    assert set(figures["mAP"]) == {"easy", "medium", "hard"}
    assert all(0.0 < value <= 1.0 for value in figures["mAP"].values())
    assert json.loads((tmp_path / "figures.json").read_text())["mAP"]["hard"] == pytest.approx(figures["mAP"]["hard"])
    revisited = generate_retrieval_demo(tmp_path / "rev", revisited_name="rparis6k")
    main(["--model_name_or_path", str(tiny_model_folder), "--data_path", str(revisited), "--dataset", "rparis6k",
          "--allow_unpickling", "--imsize", "32", "--crop_queries"])  # fmt: skip
