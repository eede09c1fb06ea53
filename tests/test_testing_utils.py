"""The helpers tests and benchmarks share: the host-synchronisation guard catches what would make a GPU wait, and
restores everything after; a fresh accelerator per call."""

import pytest
import torch

from dino_hf.testing_utils import HostSyncError, forbid_host_sync, fresh_accelerator, synthetic_crops


def test_host_sync_guard_catches_synchronisations():
    t = torch.ones(3)
    with forbid_host_sync("cpu"):
        for sync in (
            lambda: t.sum().item(),
            lambda: bool(t.sum() > 0),
            lambda: float(t.sum()),
            lambda: t.tolist(),
            lambda: t.numpy(),
            lambda: t.cpu(),
            lambda: t.nonzero(),
            lambda: t[t > 0],
            lambda: torch.equal(t, t),
        ):
            with pytest.raises(HostSyncError):
                sync()
        doubled = (t * 2).sum()  # device work without a synchronisation runs
    assert doubled.item() == 6.0 and t.tolist() == [1.0, 1.0, 1.0]  # and everything is restored afterwards


def test_fresh_accelerators_one_after_the_other():
    assert fresh_accelerator("bf16", cpu=True).mixed_precision == "bf16"
    accumulating = fresh_accelerator(cpu=True, gradient_accumulation_steps=4)
    assert accumulating.mixed_precision == "no" and accumulating.gradient_accumulation_steps == 4


def test_synthetic_crops_are_view_major_and_reproducible():
    global_crops, local_crops = synthetic_crops(3, 2, 16, 4, 8, "cpu", seed=1)
    assert global_crops.shape == (6, 3, 16, 16) and local_crops.shape == (12, 3, 8, 8)
    assert torch.equal(global_crops, synthetic_crops(3, 2, 16, 4, 8, "cpu", seed=1)[0])
    assert synthetic_crops(3, 2, 16, 0, 8, "cpu")[1] is None
