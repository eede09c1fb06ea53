# Copyright 2026 The dino_hf authors. Licensed under the Apache License, Version 2.0.
"""Finding and opening image datasets with `datasets`: Hub repositories, local folders, parquet and webdataset
shards, and the embedded offline dataset, all behind one function, [`load_image_dataset`].

The image column is cast to `datasets.Image(decode=False)`, so records carry the encoded bytes (or a path) until a
DataLoader worker decodes them; columns other than the image and the label are dropped before iteration.

Example:

```python
>>> from dino_hf.data import load_image_dataset
>>> source = load_image_dataset("embedded", "validation", embedded_options={"train_per_class": 2, "validation_per_class": 2})
>>> source.image_column, source.label_column, source.num_examples, source.class_names[:3]
('image', 'label', 20, ['disk', 'square', 'triangle'])
```
"""

from __future__ import annotations

import glob
import io
import os
from dataclasses import dataclass
from typing import Any

import datasets
from PIL import Image

from .synthetic import EMBEDDED_DATASET_NAME, embedded_dataset_files


# ImageNet-1k as webdataset shards of the original JPEGs (1,281,167 train / 50,000 validation images, 1024 / 64
# tar shards, label column `cls`). Gated: accept the ImageNet terms on the dataset page and log in (`hf auth login`)
# or pass `token=`. The canonical `ILSVRC/imagenet-1k` is a loading-script repository, which datasets >= 4 refuses.
DEFAULT_DATASET_NAME = "timm/imagenet-1k-wds"

IMAGE_COLUMN_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp", "image_bytes", "pixel_values")
LABEL_COLUMN_NAMES = ("label", "labels", "cls", "class", "target", "fine_label", "class_id")
_PACKAGED_BUILDERS = ("imagefolder", "parquet", "webdataset")
_INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


@dataclass
class ImageSource:
    """An image dataset opened for the data pipeline.

    Attributes:
        dataset: a `datasets.IterableDataset` (streaming) or `datasets.Dataset` with only the image column (cast to
            `Image(decode=False)`: records hold `{"bytes", "path"}`) and the label column, if any.
        image_column: name of the image column.
        label_column: name of the integer label column, or None when the dataset has no labels.
        num_examples: number of records in the split, or None where the metadata does not say.
        num_shards: number of independently readable pieces (files, or row ranges of a map-style dataset).
        class_names: label names (from a `ClassLabel` feature), or None.
        name: the dataset name as given.
        split: the split.
    """

    dataset: datasets.IterableDataset | datasets.Dataset
    image_column: str
    label_column: str | None
    num_examples: int | None
    num_shards: int
    class_names: list[str] | None
    name: str
    split: str

    @property
    def streaming(self) -> bool:
        return isinstance(self.dataset, datasets.IterableDataset)


def _is_local_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[") or os.path.isfile(name)


def _local_files(pattern: str) -> list[str]:
    files = sorted(glob.glob(pattern, recursive=True)) if any(ch in pattern for ch in "*?[") else [pattern]
    if not files:
        raise FileNotFoundError(f"No files match {pattern!r}.")
    return files


def _builder_for(files: list[str]) -> str:
    extensions = {os.path.splitext(f)[1].lower() for f in files}
    if extensions <= {".parquet"}:
        return "parquet"
    if extensions <= {".tar"}:
        return "webdataset"
    raise ValueError(
        f"Cannot tell the format of {files[:3]}...: give parquet (.parquet) or webdataset (.tar) files, a folder, "
        "or a Hub dataset id."
    )


def _parquet_rows(files: list[str]) -> int | None:
    try:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except Exception:  # remote or unreadable metadata: the count is only informative
        return None


def _webdataset_rows(files: list[str]) -> int | None:
    """Samples in local webdataset shards: distinct keys (the member name up to its first dot) per tar file."""
    import tarfile

    total = 0
    try:
        for path in files:
            with tarfile.open(path) as tar:  # reads the headers only, seeking over the payloads
                keys = set()
                for member in tar:
                    if member.isfile():
                        folder, name = os.path.split(member.name)
                        keys.add((folder, name.split(".", 1)[0]))
                total += len(keys)
    except (OSError, tarfile.TarError):  # remote or unreadable: the size stays unknown
        return None
    return total


def _local_rows(files: list[str]) -> int | None:
    """Rows of local parquet (from their metadata) or webdataset files (from their headers); None otherwise."""
    extensions = {os.path.splitext(f)[1].lower() for f in files}
    if extensions == {".parquet"}:
        return _parquet_rows(files)
    return _webdataset_rows(files) if extensions == {".tar"} else None


def _local_folder_files(folder: str, split: str) -> list[str] | None:
    """The data files `datasets` finds for `split` in a local folder (None when it recognises no layout)."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        files = DataFilesDict.from_patterns(get_data_patterns(folder), base_path=folder).get(split)
    except Exception:  # no recognisable layout: datasets itself will say what is wrong
        return None
    return [str(f) for f in files] if files else None


def _is_local_image_folder(name: str, split: str) -> bool:
    """A local folder whose split holds image files (not parquet or tar shards)."""
    if not os.path.isdir(name):
        return False
    files = _local_folder_files(name, split)
    return bool(files) and all(os.path.splitext(f)[1].lower() not in (".parquet", ".tar", ".py") for f in files)


def _open(
    name: str,
    split: str,
    data_files: Any,
    data_dir: str | None,
    streaming: bool,
    revision: str | None,
    token: str | bool | None,
    embedded_options: dict | None,
) -> tuple[datasets.Dataset | datasets.IterableDataset, int | None]:
    """`(dataset, number of rows if known from local metadata)`."""
    if name == EMBEDDED_DATASET_NAME:
        options = dict(embedded_options or {})
        cache_dir = options.pop("cache_dir", None)
        files = embedded_dataset_files(cache_dir, **options)
        if split not in files:
            raise ValueError(f"The embedded dataset has splits {sorted(files)}, not {split!r}.")
        dataset = datasets.load_dataset("parquet", data_files={split: files[split]}, split=split, streaming=streaming)
        return dataset, _parquet_rows(files[split])
    if embedded_options:
        raise ValueError("embedded_options only applies to the embedded dataset (dataset_name='embedded').")
    if name in _PACKAGED_BUILDERS:
        if data_files is None and data_dir is None:
            raise ValueError(f"The {name!r} builder needs data_files= or data_dir=.")
        dataset = datasets.load_dataset(
            name, data_files=data_files, data_dir=data_dir, split=split, streaming=streaming
        )
        return dataset, None
    if _is_local_pattern(name):
        files = _local_files(name)
        builder = _builder_for(files)
        dataset = datasets.load_dataset(builder, data_files={split: files}, split=split, streaming=streaming)
        return dataset, _local_rows(files)
    if streaming and _is_local_image_folder(name, split):
        # Opened with random access (an Arrow table of file paths, built once and cached by datasets): its size
        # is known and every epoch gets a global permutation. A streamed folder is one piece read in storage order,
        # i.e. class by class.
        streaming = False
    try:
        dataset = datasets.load_dataset(
            name,
            data_files=data_files,
            data_dir=data_dir,
            split=split,
            streaming=streaming,
            revision=revision,
            token=token,
        )
        if os.path.isdir(name) and data_files is None:
            return dataset, _local_rows(_local_folder_files(name, split) or [])
    except RuntimeError as err:
        if "Dataset scripts are no longer supported" in str(err):
            raise ValueError(
                f"{name!r} is a loading-script dataset, which datasets>=4 cannot load. Use a copy stored as "
                f"parquet or webdataset shards instead, e.g. {DEFAULT_DATASET_NAME!r} for ImageNet-1k "
                "(see docs/data.md)."
            ) from err
        raise
    except datasets.exceptions.DatasetNotFoundError as err:
        raise ValueError(
            f"Could not open {name!r}: {err}. Gated datasets (ImageNet copies are) need their terms accepted on "
            "https://huggingface.co/datasets/" + name + " and a token (`hf auth login`, or token=...)."
        ) from err
    return dataset, None


def find_image_column(features: datasets.Features, requested: str | None) -> str:
    """The image column of `features`: `requested` if given (it must exist), else the first `Image` feature named
    in `IMAGE_COLUMN_NAMES`, any `Image` feature, or a binary column of those names."""
    columns = list(features)
    if requested is not None:
        if requested not in features:
            raise ValueError(f"Image column {requested!r} not found; the dataset has columns {columns}.")
        return requested
    image_typed = [c for c in columns if isinstance(features[c], datasets.Image)]
    by_name = [c for c in IMAGE_COLUMN_NAMES if c in features]
    for candidate in by_name:
        if candidate in image_typed:
            return candidate
    if image_typed:
        return image_typed[0]
    for candidate in by_name:
        feature = features[candidate]
        if isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"):
            return candidate
    raise ValueError(
        f"No image column found; the dataset has columns {columns}. Pass image_column= (an Image feature or a "
        f"binary column; names tried: {list(IMAGE_COLUMN_NAMES)})."
    )


def _is_integer_label(feature: Any) -> bool:
    return isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and feature.dtype in _INTEGER_DTYPES
    )


def _find_label_column(features: datasets.Features, requested: str | None) -> str | None:
    if requested is not None:
        if requested not in features:
            raise ValueError(f"Label column {requested!r} not found; the dataset has columns {list(features)}.")
        if not _is_integer_label(features[requested]):
            raise ValueError(f"Label column {requested!r} must hold integers, got {features[requested]}.")
        return requested
    class_labels = [c for c in features if isinstance(features[c], datasets.ClassLabel)]
    for candidate in LABEL_COLUMN_NAMES:
        if candidate in features and _is_integer_label(features[candidate]):
            return candidate
    return class_labels[0] if class_labels else None


def open_dataset(
    dataset_name: str,
    split: str,
    *,
    data_files: Any = None,
    streaming: bool = False,
    token: str | bool | None = None,
    embedded_options: dict | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """The `datasets` object of a split, every column kept and decoded as its features say: the sources of
    [`load_image_dataset`] (the embedded dataset, Hub ids, local folders and shards), for readers of other columns
    than an image and a label (segmentation masks)."""
    return _open(dataset_name, split, data_files, None, streaming, None, token, embedded_options)[0]


def load_image_dataset(
    dataset_name: str = DEFAULT_DATASET_NAME,
    split: str = "train",
    *,
    data_files: Any = None,
    data_dir: str | None = None,
    streaming: bool = True,
    image_column: str | None = None,
    label_column: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    embedded_options: dict | None = None,
) -> ImageSource:
    """Open an image dataset for the data pipeline, without decoding any image.

    Args:
        dataset_name: one of
            - `"embedded"`: the offline shapes dataset generated on this machine (`dino_hf.data.synthetic`),
              read from its parquet shards exactly like a Hub parquet dataset;
            - a Hub dataset id (default `"timm/imagenet-1k-wds"`, gated ImageNet-1k; any parquet, webdataset or
              image-folder repository works, loading-script repositories do not);
            - a local folder (image folder with class sub-folders, or parquet / webdataset files);
            - a local file or glob of `.parquet` or `.tar` (webdataset) shards;
            - `"imagefolder"`, `"parquet"` or `"webdataset"` with `data_files=` / `data_dir=`.
        split: the split to read.
        data_files, data_dir, revision, token: passed to `datasets.load_dataset`.
        streaming: stream the records (default) instead of building an Arrow cache.
        image_column, label_column: column names; detected when None (an `Image` feature, or the names in
            `IMAGE_COLUMN_NAMES` / `LABEL_COLUMN_NAMES`; the label must be an integer or `ClassLabel` column).
        embedded_options: generator options of the embedded dataset (e.g. `{"train_per_class": 20}`, see
            `embedded_dataset_files`), plus `"cache_dir"`.

    Raises:
        ValueError: with the available columns when no image column is found, for a loading-script repository,
            or for a gated dataset without access.
    """
    dataset, local_rows = _open(
        dataset_name, split, data_files, data_dir, streaming, revision, token, embedded_options
    )
    features = dataset.features
    if features is None:
        # Some streamed formats only know their columns after reading a record.
        dataset = dataset._resolve_features()
        features = dataset.features
    image_column = find_image_column(features, image_column)
    label_column = _find_label_column(features, label_column)
    keep = [image_column] + ([label_column] if label_column else [])
    dataset = dataset.select_columns(keep)
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False))

    label_feature = features[label_column] if label_column else None
    class_names = list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel) else None
    if isinstance(dataset, datasets.Dataset):
        num_examples: int | None = len(dataset)
        num_shards = len(dataset)
    else:
        num_examples = local_rows
        split_info = (dataset.info.splits or {}).get(split) if dataset.info.splits else None
        if num_examples is None and split_info is not None and split_info.num_examples:
            num_examples = int(split_info.num_examples)
        num_shards = dataset.num_shards
    return ImageSource(
        dataset=dataset,
        image_column=image_column,
        label_column=label_column,
        num_examples=num_examples,
        num_shards=num_shards,
        class_names=class_names,
        name=dataset_name,
        split=split,
    )


def record_image(value: Any) -> Image.Image:
    """An undecoded image column value (`{"bytes", "path"}`, see [`ImageSource`]) decoded as RGB."""
    data = value.get("bytes") if isinstance(value, dict) else None
    path = value.get("path") if isinstance(value, dict) else None
    image = Image.open(io.BytesIO(data)) if data else Image.open(path)
    return image.convert("RGB")


def first_image(source: ImageSource) -> Image.Image:
    """The first image of `source` in storage order, decoded as RGB (e.g. the picture of a model card)."""
    return record_image(next(iter(source.dataset))[source.image_column])


__all__ = [
    "DEFAULT_DATASET_NAME",
    "IMAGE_COLUMN_NAMES",
    "LABEL_COLUMN_NAMES",
    "ImageSource",
    "find_image_column",
    "first_image",
    "record_image",
    "load_image_dataset",
    "open_dataset",
]
