"""The helpers tests and benchmarks share: the host-synchronisation guard catches what would make a GPU wait, and
restores everything after; a fresh accelerator per call; a launched process tree never outlives its test."""

import time

import pytest
import torch

from dino_hf.testing_utils import (
    HostSyncError,
    forbid_host_sync,
    fresh_accelerator,
    run_process_tree,
    synthetic_crops,
)


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


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[-1][0] != "Z"  # a zombie is not running
    except FileNotFoundError:
        return False


def _ends_soon(pid: int, seconds: float = 5.0) -> bool:
    """Whether `pid` is gone within `seconds` (a SIGKILL takes effect asynchronously)."""
    deadline = time.monotonic() + seconds
    while _running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_process_tree_past_its_timeout_is_killed_whole_and_fails_with_its_output(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = f"echo started; sleep 60 & echo $! > {pid_file}; wait"  # a child, as torchrun's workers
    start = time.perf_counter()
    with pytest.raises(AssertionError, match=r"ran past 2 s and was killed with its process group(.|\n)*started"):
        run_process_tree(["bash", "-c", script], timeout=2)
    assert time.perf_counter() - start < 30
    assert _ends_soon(int(pid_file.read_text()))


def test_a_process_tree_that_leaves_a_process_behind_fails(tmp_path):
    pid_file = tmp_path / "orphan.pid"
    script = f"sleep 60 > /dev/null 2>&1 & echo $! > {pid_file}; exit 0"  # an orphan that does not hold the output
    with pytest.raises(AssertionError, match="exited with 0 but left processes running"):
        run_process_tree(["bash", "-c", script], timeout=30)
    assert _ends_soon(int(pid_file.read_text()))


def test_a_process_tree_returns_its_status_and_output():
    result = run_process_tree(["bash", "-c", "echo out; echo err >&2; exit 3"], timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
