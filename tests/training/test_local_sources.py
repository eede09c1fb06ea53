"""Pretraining on local files takes the epoch length from them: no --steps_per_epoch (issue 10, item 9)."""

import io
import tarfile

import datasets
import pytest
from test_pretrain import tiny_run

from dino_hf.training import pretrain


def _png(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _image_folder(root):
    for c in range(2):
        (root / "train" / f"class{c}").mkdir(parents=True)
        for i in range(12):
            (root / "train" / f"class{c}" / f"class{c}_{i}.png").write_bytes(_png(12 * c + i))
    return str(root)


def _webdataset(root):
    root.mkdir()
    for shard in range(2):
        with tarfile.open(root / f"train-{shard}.tar", "w") as tar:
            for key in range(12 * shard, 12 * shard + 12):
                for name, payload in ((f"{key:04d}.png", _png(key)), (f"{key:04d}.cls", str(key % 2).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(root / "train-*.tar")


@pytest.mark.parametrize("make", [_image_folder, _webdataset])
def test_local_files_need_no_steps_per_epoch(tmp_path, monkeypatch, make):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    dataset = make(tmp_path / "data")
    args = tiny_run(
        tmp_path / "run",
        tmp_path / "embedded",
        data={"dataset_name": dataset, "embedded_options": None},
        training={"steps_per_epoch": None, "epochs": 1, "warmup_epochs": 0, "logging_steps": 3},
    )
    result = pretrain(*args)
    # 24 images, 4 per step: an epoch of 6 steps, counted from the files.
    assert result.global_step == 6 and result.history[-1]["epoch"] == pytest.approx(5 / 6, abs=1e-4)
