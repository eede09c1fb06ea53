"""Opening datasets: local image folders, parquet and webdataset shards, column detection and clear errors."""

import io
import tarfile

import datasets
import pytest
from data_helpers import encode, smooth_image, write_parquet

from dino_hf.data import build_eval_loader, load_image_dataset


def _labels_by_file(source):
    return {
        i.rsplit(":", 1)[-1]: int(label)
        for b in build_eval_loader(source, 4, num_workers=0)
        for i, label in zip(b.ids, b.labels)
    }


def test_local_image_folder_with_class_subfolders(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path.with_name(tmp_path.name + "-cache"))
    for label in ("cat", "dog"):
        (tmp_path / "train" / label).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "train" / label / f"{label}{i}.png").write_bytes(encode(smooth_image(20, 24, seed=i)))
    source = load_image_dataset(str(tmp_path))
    assert (source.image_column, source.label_column, source.class_names) == ("image", "label", ["cat", "dog"])
    # Its size comes from the files (no --steps_per_epoch needed), and it is read with random access.
    assert source.num_examples == 6 and not source.streaming
    labels = _labels_by_file(source)
    assert labels == {f"{c}{i}.png": int(c == "dog") for c in ("cat", "dog") for i in range(3)}


def test_parquet_glob_and_explicit_columns(tmp_path):
    for shard in range(2):
        write_parquet(
            tmp_path / f"shard-{shard}.parquet",
            [encode(smooth_image(20, 20, seed=shard * 10 + i)) for i in range(5)],
            [shard] * 5,
            extra_columns={"caption": ["x"] * 5},
        )
    source = load_image_dataset(str(tmp_path / "shard-*.parquet"))
    assert source.num_shards == 2 and source.num_examples == 10 and source.label_column == "label"
    # Columns other than image and label are dropped before reading.
    assert sorted(source.dataset.features) == ["image", "label"]
    with pytest.raises(ValueError, match=r"Label column 'caption' must hold integers"):
        load_image_dataset(str(tmp_path / "shard-0.parquet"), label_column="caption")
    with pytest.raises(
        ValueError, match=r"Image column 'photo' not found; the dataset has columns \['image', 'label', 'caption'\]"
    ):
        load_image_dataset(str(tmp_path / "shard-0.parquet"), image_column="photo")


def test_missing_image_column_is_a_clear_error(tmp_path):
    path = tmp_path / "text.parquet"
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).to_parquet(str(path))
    with pytest.raises(ValueError, match=r"No image column found; the dataset has columns \['text', 'label'\]"):
        load_image_dataset(str(path))


def _write_webdataset(path, start: int, count: int) -> None:
    with tarfile.open(path, "w") as tar:
        for key in range(start, start + count):
            for name, payload in (
                (f"{key:06d}.jpg", encode(smooth_image(24, 24, seed=key), "JPEG")),
                (f"{key:06d}.cls", str(key % 3).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_webdataset_shards(tmp_path):
    _write_webdataset(tmp_path / "train-0000.tar", 0, 4)
    _write_webdataset(tmp_path / "train-0001.tar", 4, 3)
    source = load_image_dataset(str(tmp_path / "train-*.tar"))
    assert (source.image_column, source.label_column, source.num_shards) == ("jpg", "cls", 2)
    assert source.num_examples == 7  # counted from the tar headers
    # Record ids end with the webdataset key, so a bad sample can be found in its shard.
    assert _labels_by_file(source) == {f"{k:06d}.jpg": k % 3 for k in range(7)}


def test_loading_script_repositories_point_to_parquet_copies(tmp_path):
    script_dir = tmp_path / "imagenet_script"
    script_dir.mkdir()
    (script_dir / "imagenet_script.py").write_text("# a datasets loading script\n")
    with pytest.raises(ValueError, match=r"loading-script dataset.*timm/imagenet-1k-wds"):
        load_image_dataset(str(script_dir))


def test_gated_datasets_explain_how_to_get_access(monkeypatch):
    def refuse(*args, **kwargs):
        raise datasets.exceptions.DatasetNotFoundError("Dataset 'org/gated' is a gated dataset on the Hub.")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(ValueError, match=r"terms accepted on https://huggingface.co/datasets/org/gated"):
        load_image_dataset("org/gated")


def test_embedded_options_are_only_for_the_embedded_dataset(tmp_path):
    with pytest.raises(ValueError, match="embedded_options"):
        load_image_dataset(str(tmp_path), embedded_options={"train_per_class": 2})
    with pytest.raises(ValueError, match="splits"):
        load_image_dataset(
            "embedded",
            "test",
            embedded_options={"cache_dir": str(tmp_path), "train_per_class": 1, "validation_per_class": 1},
        )
