"""Weighted k-NN: the vote against a brute-force computation, chunking, and the offline accuracy metrics."""

import math

import numpy as np
import pytest
import torch

from dino_hf.evaluation import (
    PIXEL_BASELINE_SIZE,
    knn_classify,
    knn_evaluate,
    load_metric,
    pixel_features,
    top_k_accuracies,
)


def brute_force_scores(train, train_labels, test, k, temperature, num_classes):
    """The paper's vote written out with Python loops in float64."""
    train = train.double() / train.double().norm(dim=1, keepdim=True)
    test = test.double() / test.double().norm(dim=1, keepdim=True)
    scores = torch.zeros(test.shape[0], num_classes, dtype=torch.float64)
    for i, query in enumerate(test):
        similarities = [(float(query @ t), int(label)) for t, label in zip(train, train_labels)]
        for similarity, label in sorted(similarities, reverse=True)[:k]:
            scores[i, label] += math.exp(similarity / temperature)
    return scores


@pytest.fixture
def features():
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(120, 16, generator=generator)
    labels = torch.randint(0, 6, (120,), generator=generator)
    test = torch.randn(23, 16, generator=generator)
    test_labels = torch.randint(0, 6, (23,), generator=generator)
    return train, labels, test, test_labels


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.07), (7, 0.07), (20, 0.5)])
def test_vote_matches_brute_force(features, k, temperature):
    train, labels, test, _ = features
    scores = knn_classify(train, labels, test, k=k, temperature=temperature, num_classes=8)
    assert scores.shape == (23, 8) and scores.dtype == torch.float32
    expected = brute_force_scores(train, labels, test, k, temperature, 8)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=0)
    # Features are normalised inside: their scale does not matter.
    rescaled = knn_classify(3.7 * train, labels, test / 5, k=k, temperature=temperature, num_classes=8)
    torch.testing.assert_close(rescaled, scores, rtol=1e-5, atol=0)


def test_chunked_equals_unchunked_exactly():
    generator = torch.Generator().manual_seed(1)
    train, labels = torch.randn(700, 48, generator=generator), torch.randint(0, 10, (700,), generator=generator)
    test, test_labels = torch.randn(53, 48, generator=generator), torch.randint(0, 10, (53,), generator=generator)
    unchunked = knn_classify(train, labels, test, k=20, chunk_size=53)
    for chunk_size in (1, 2, 7, 16, 50, 1000):
        assert torch.equal(knn_classify(train, labels, test, k=20, chunk_size=chunk_size), unchunked), chunk_size
    whole = knn_evaluate(train, labels, test, test_labels, ks=(10, 20), chunk_size=1000)
    assert knn_evaluate(train, labels, test, test_labels, ks=(10, 20), chunk_size=3, device="cpu") == whole


def test_evaluate_several_k_from_one_search_equals_separate_classifications(features):
    train, labels, test, test_labels = features
    results = knn_evaluate(train, labels, test, test_labels, ks=(1, 3, 10, 20), num_classes=6)
    assert sorted(results) == [1, 3, 10, 20]
    for k, accuracies in results.items():
        scores = knn_classify(train, labels, test, k=k, num_classes=6)
        top1 = 100.0 * (scores.argmax(1) == test_labels).double().mean().item()
        # As in the reference, top-5 counts the min(5, k) best classes.
        ranked = scores.topk(min(5, k), dim=1).indices
        top5 = 100.0 * (ranked == test_labels[:, None]).any(1).double().mean().item()
        assert accuracies == pytest.approx({"top1": top1, "top5": top5}, abs=1e-9), k
    assert results[1]["top1"] != results[20]["top1"]  # the k's really differ on this data


def test_clustered_features_are_classified_correctly():
    generator = torch.Generator().manual_seed(2)
    centers = torch.randn(4, 32, generator=generator) * 5
    labels = torch.arange(200) % 4
    train = centers[labels] + torch.randn(200, 32, generator=generator)
    test_labels = torch.arange(40) % 4
    test = centers[test_labels] + torch.randn(40, 32, generator=generator)
    assert knn_evaluate(train, labels, test, test_labels, ks=(20,))[20] == {"top1": 100.0, "top5": 100.0}


def test_input_errors(features):
    train, labels, test, test_labels = features
    with pytest.raises(ValueError, match=r"k must be between 1 and the number of training features \(120\)"):
        knn_classify(train, labels, test, k=200)
    with pytest.raises(ValueError, match="does not fit num_classes=3"):
        knn_classify(train, labels, test, num_classes=3)
    with pytest.raises(ValueError, match="Expected train features"):
        knn_classify(train, labels, test[:, :4])
    with pytest.raises(ValueError, match="test_labels must be"):
        knn_evaluate(train, labels, test, test_labels[:5], ks=(5,))


def test_local_evaluate_metrics_work_offline():
    accuracy = load_metric("accuracy")
    predictions, references = np.array([0, 1, 2, 1, 0]), np.array([0, 1, 1, 1, 2])
    assert accuracy.compute(predictions=predictions, references=references) == {"accuracy": 0.6}
    assert accuracy.compute(predictions=predictions, references=references, normalize=False) == {"accuracy": 3.0}
    top_k = load_metric("top_k_accuracy")
    ranked = [[0, 2, 1], [2, 0, 1], [1, 2, 0]]
    assert top_k.compute(predictions=ranked, references=[0, 1, 0], k=2) == {"top_k_accuracy": pytest.approx(1 / 3)}
    assert top_k.compute(predictions=ranked, references=[0, 1, 0], k=3) == {"top_k_accuracy": 1.0}
    assert top_k_accuracies(torch.tensor(ranked), torch.tensor([0, 0, 2]), topk=(1, 2)) == pytest.approx(
        {"top1": 100 / 3, "top2": 100.0}
    )
    with pytest.raises(ValueError, match="Unknown local metric"):
        load_metric("f1")


def test_pixel_features_match_their_definition():
    """Area-pool to 16 x 16, flatten, subtract the image's own mean, L2-normalise: written out with loops."""
    images = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    features = pixel_features(images)
    for image, feature in zip(images, features):
        pooled = torch.tensor(
            [
                [[float(image[c, 2 * i : 2 * i + 2, 3 * j : 3 * j + 3].mean()) for j in range(16)] for i in range(16)]
                for c in range(3)
            ]
        ).flatten()
        centred = pooled - pooled.mean()
        torch.testing.assert_close(feature, centred / centred.norm(), rtol=1e-5, atol=1e-6)
    assert PIXEL_BASELINE_SIZE == 16


def test_pixel_features_ignore_brightness_but_not_content():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pixel_features(images * 1.0 + 0.3), pixel_features(images), atol=1e-6, rtol=0)
    assert (pixel_features(images)[0] @ pixel_features(images)[1]).abs() < 0.5
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        pixel_features(images[0])
