"""Checkpoint files: pickle-free round trips, atomic writes, rotation."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dino_hf import DinoForSelfDistillation
from dino_hf.testing_utils import tiny_config
from dino_hf.training import checkpointing as ckpt
from dino_hf.training.optimization import create_optimizer


def _trained_optimizer():
    model = DinoForSelfDistillation(tiny_config())
    optimizer = create_optimizer(model.student, lr=1e-3, weight_decay=0.04)
    for _ in range(2):
        model.train()(torch.randn(4, 3, 32, 32)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def test_optimizer_state_round_trip_without_pickle(tmp_path):
    model, optimizer = _trained_optimizer()
    ckpt.save_structure(optimizer.state_dict(), tmp_path, "optimizer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer.json", "optimizer.safetensors"]
    restored = ckpt.load_structure(tmp_path, "optimizer")
    fresh = create_optimizer(model.student, lr=5.0, weight_decay=0.0)
    fresh.load_state_dict(restored)
    original = optimizer.state_dict()
    again = fresh.state_dict()
    assert again["param_groups"] == original["param_groups"]
    for index, state in original["state"].items():
        for key, value in state.items():
            assert torch.equal(again["state"][index][key], value), (index, key)


def test_rng_state_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(123)
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    ckpt.save_rng(tmp_path, rank=0, generators={"augment": generator})
    expected = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=generator))
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    generator.manual_seed(0)
    ckpt.load_rng(tmp_path, rank=0, generators={"augment": generator})
    got = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=generator))
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and got[2] == expected[2]
    assert torch.equal(got[3], expected[3])
    with pytest.raises(FileNotFoundError, match="number of processes it was saved with"):
        ckpt.load_rng(tmp_path, rank=1)


def _write_checkpoint(output_dir, step, model, optimizer, limit=None):
    staging = ckpt.begin_checkpoint(output_dir, step)
    ckpt.save_rng(staging, 0)
    ckpt.save_model_and_optimizer(staging, model.state_dict(), optimizer.state_dict())
    return ckpt.finish_checkpoint(output_dir, step, {"global_step": step}, save_total_limit=limit)


def test_rotation_and_latest(tmp_path):
    model, optimizer = _trained_optimizer()
    for step in (10, 20, 30):
        _write_checkpoint(tmp_path, step, model, optimizer, limit=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-20", "checkpoint-30"]
    assert ckpt.resolve_checkpoint("latest", tmp_path).name == "checkpoint-30"
    state = ckpt.load_model_state(ckpt.resolve_checkpoint("latest", tmp_path))
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key


def test_interrupted_write_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model, optimizer = _trained_optimizer()
    _write_checkpoint(tmp_path, 10, model, optimizer)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(ckpt, "save_structure", crash)
    with pytest.raises(KeyboardInterrupt):
        _write_checkpoint(tmp_path, 20, model, optimizer)
    monkeypatch.undo()
    # The half-written checkpoint is invisible; the previous one is still the latest and loads.
    assert (tmp_path / ".checkpoint-20.tmp").exists()
    latest = ckpt.resolve_checkpoint("latest", tmp_path)
    assert latest.name == "checkpoint-10"
    state = ckpt.load_model_state(latest)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    with pytest.raises(FileNotFoundError):
        ckpt.resolve_checkpoint(tmp_path / ".checkpoint-20.tmp", tmp_path)


def test_a_checkpoint_half_deleted_by_a_killed_run_is_never_listed(tmp_path, monkeypatch):
    """Rotation renames an old checkpoint out of the checkpoints' names before deleting it: a run killed mid-delete
    leaves no `checkpoint-N` missing files, and the next save removes the leftover."""
    model, optimizer = _trained_optimizer()
    for step in (10, 20):
        _write_checkpoint(tmp_path, step, model, optimizer, limit=2)
    real_rmtree = ckpt.shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        (Path(path) / "model.safetensors").unlink()  # part of the folder is gone when the run is killed
        raise KeyboardInterrupt("killed while deleting")

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        _write_checkpoint(tmp_path, 30, model, optimizer, limit=2)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-20", "checkpoint-30"]
    assert (tmp_path / ".checkpoint-10.deleting").is_dir()
    for checkpoint in ckpt.list_checkpoints(tmp_path):
        ckpt.load_model_state(checkpoint)
    _write_checkpoint(tmp_path, 40, model, optimizer, limit=2)
    assert not list(tmp_path.glob(".*.deleting"))
