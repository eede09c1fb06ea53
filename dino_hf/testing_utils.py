"""What the tests (`tests/`) and the measurement harness (`benchmarks/`) share, as `transformers.testing_utils`.

- [`tiny_config`]: the small ViT of the reference vectors (`tests/fixtures`), quick on a CPU.
- [`fresh_accelerator`]: an `Accelerator` with accelerate's per-process state reset, so one process can build several.
- [`tiny_training_step`]: a seeded model assembled by `build_training_step`, the trainer's own factory.
- [`synthetic_crops`], [`warmup_values`]: crops and schedule values of a run in its warm-up.
- [`forbid_host_sync`]: a context in which anything that would make the host wait for the device raises;
  [`steps_without_host_sync`]: training steps run inside it.
- [`relative_difference`]: `||a - b|| / ||b||` over several tensors.
- [`FakeHub`]: `huggingface_hub.HfApi`'s login, repository and upload calls, recorded instead of sent.
- [`run_process_tree`], [`start_process_tree`], [`kill_process_tree`]: a command in its own session whose whole
  process tree is killed on a timeout; the way every test launches a subprocess (CONTRIBUTING.md).

Nothing in the library imports this module; it needs no test framework.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch.utils._python_dispatch import TorchDispatchMode

from .configuration_dino import DinoConfig
from .modeling_dino import DinoForSelfDistillation
from .training.schedules import ScheduleValues
from .training.step import DinoTrainingStep, StepOutput, TrainingStepSetup, build_training_step


def tiny_config(**overrides: Any) -> DinoConfig:
    """The reference vectors' configuration: a 2-block ViT of width 64 on 32 px images, patch 8, 256 prototypes."""
    values = dict(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        layer_norm_eps=1e-6,
        out_dim=256,
        head_hidden_dim=128,
        head_bottleneck_dim=32,
        drop_path_rate=0.0,
    )
    values.update(overrides)
    return DinoConfig(**values)


def fresh_accelerator(mixed_precision: str = "no", cpu: bool = False, **kwargs: Any) -> Accelerator:
    """A new `Accelerator` (`mixed_precision="auto"`: bf16 on a GPU, none on the CPU).

    accelerate keeps one global state per process; resetting it lets one process (a test, the GPU checks) build
    accelerators with different precisions or accumulation steps one after the other.
    """
    AcceleratorState._reset_state(reset_partial_state=True)
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and not cpu else "no"
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu, **kwargs)


def tiny_training_step(
    accelerator: Accelerator, config: DinoConfig, seed: int = 0, **options: Any
) -> TrainingStepSetup:
    """`DinoForSelfDistillation(config)` initialised from `seed`, assembled by `build_training_step` with AdamW at lr
    1e-3 and weight decay 0.04; `options` go to `build_training_step` (clipping, `fused`, ...)."""
    torch.manual_seed(seed)
    return build_training_step(
        accelerator, DinoForSelfDistillation(config), **{"lr": 1e-3, "weight_decay": 0.04, **options}
    )


def synthetic_crops(
    batch_size: int,
    global_crops: int,
    global_size: int,
    local_crops: int,
    local_size: int,
    device: torch.device | str,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """View-major normalised crops, `(G * B, 3, S, S)` and `(L * B, 3, s, s)` (None when L = 0), drawn on the
    device."""
    generator = torch.Generator(device=device).manual_seed(seed)
    shape_global = (global_crops * batch_size, 3, global_size, global_size)
    crops = torch.randn(shape_global, generator=generator, device=device)
    if local_crops == 0:
        return crops, None
    shape_local = (local_crops * batch_size, 3, local_size, local_size)
    return crops, torch.randn(shape_local, generator=generator, device=device)


def warmup_values(index: int, freeze_last_layer: bool = False) -> ScheduleValues:
    """Schedule values of a run in its warm-up: the teacher temperature and learning rate change at every step."""
    return ScheduleValues(
        lr=1e-3 * (1 + index),
        weight_decay=0.04,
        momentum=0.99,
        teacher_temp=0.04 + 0.002 * index,
        epoch=1.0,
        freeze_last_layer=freeze_last_layer,
    )


def relative_difference(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    """`||actual - expected|| / ||expected||` over all the tensors together (float64 on the host)."""
    pairs = [(a.detach().double(), e.detach().double()) for a, e in zip(actual, expected, strict=True)]
    diff = sum(float((a - e).pow(2).sum()) for a, e in pairs)
    norm = sum(float(e.pow(2).sum()) for _, e in pairs)
    return (diff / max(norm, 1e-300)) ** 0.5


# ---------------------------------------------------------------------------------------------------------------------
# Host synchronisation
# ---------------------------------------------------------------------------------------------------------------------


class HostSyncError(RuntimeError):
    """Raised inside [`forbid_host_sync`] by an operation that would make the host wait for the device."""


# Operators that read device memory on the host (`.item()`, `bool(t)`, `float(t)` all reach `_local_scalar_dense`) or
# whose output size depends on the data (the host must read it to allocate the output).
_SYNCING_OPS = {
    torch.ops.aten._local_scalar_dense,
    torch.ops.aten.equal,
    torch.ops.aten.nonzero,
    torch.ops.aten.masked_select,
    torch.ops.aten._unique2,
    torch.ops.aten.unique_dim,
    torch.ops.aten.unique_consecutive,
    torch.ops.aten.repeat_interleave,
}
_INDEXING_OPS = {torch.ops.aten.index, torch.ops.aten.index_put, torch.ops.aten.index_put_}
# Tensor methods that copy to host memory without going through an operator when the tensor is already there.
_SYNCING_METHODS = ("tolist", "numpy", "cpu")


class _HostSyncGuard(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in _SYNCING_OPS:
            raise HostSyncError(f"{func} synchronises the host with the device.")
        if packet in _INDEXING_OPS:
            indices = args[1] if len(args) > 1 else ()
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()):
                raise HostSyncError(f"{func} with a boolean mask synchronises the host with the device.")
        return func(*args, **(kwargs or {}))


def _raising_method(name: str):
    def method(self, *args, **kwargs):
        raise HostSyncError(f"Tensor.{name}() synchronises the host with the device.")

    return method


@contextlib.contextmanager
def forbid_host_sync(device: torch.device | str | None = None) -> Iterator[None]:
    """Make every host synchronisation inside the block raise.

    On CUDA this is `torch.cuda.set_sync_debug_mode("error")`, which catches every synchronising CUDA call (and
    works around compiled code). On other devices (the CPU tests) a dispatch mode raises [`HostSyncError`] on the
    operators that would synchronise on a GPU (`.item()`, `bool(tensor)`, `nonzero`, boolean-mask indexing...), and
    `Tensor.tolist`, `.numpy` and `.cpu` raise; run eager code there (a dispatch mode does not see into compiled
    graphs). Everything is restored on leaving the block.
    """
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        return
    originals = {name: getattr(torch.Tensor, name) for name in _SYNCING_METHODS}
    try:
        for name in _SYNCING_METHODS:
            setattr(torch.Tensor, name, _raising_method(name))
        with _HostSyncGuard():
            yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


def steps_without_host_sync(
    step: DinoTrainingStep, global_crops: torch.Tensor, local_crops: torch.Tensor | None, steps: int = 2
) -> StepOutput:
    """One warm-up step (compilation and lazy initialisation may synchronise), then `steps` steps inside
    [`forbid_host_sync`] with the last layer frozen in the first of them; raises on the first synchronisation and
    returns the last step's output."""
    device = global_crops.device
    step(global_crops, local_crops, warmup_values(0))
    with forbid_host_sync(device):
        for index in range(1, steps + 1):
            result = step(global_crops, local_crops, warmup_values(index, freeze_last_layer=index == 1))
    return result


class FakeHubError(RuntimeError):
    """What a [`FakeHub`] call told to fail raises (`HfHubHTTPError` needs a real HTTP response to be built)."""


class FakeHub:
    """The Hub behind `huggingface_hub.HfApi` (`whoami`, `create_repo`, `upload_folder`), faked with pytest's
    `monkeypatch`: each call is recorded in `events`, in order, with the token it was made with in `tokens`; `created`
    and `uploaded` (`repo_id`, `files`: relative path -> bytes, `ignore_patterns` honoured) say what reached it.
    `fail` names a call that raises [`FakeHubError`], a 403 quoting `secret` as a careless server message might.
    `record(event)` adds other events (e.g. training steps) to the same timeline.
    """

    def __init__(self, monkeypatch: Any, user: str = "alice", fail: str | None = None, secret: str = "") -> None:
        import huggingface_hub

        self.events: list[str] = []
        self.tokens: list[str | None] = []
        self.created: dict[str, Any] = {}
        self.uploaded: dict[str, Any] = {}
        self.fail, self.secret = fail, secret
        hub = self

        def whoami(api, token=None, **kwargs):
            hub._call("whoami", api)
            return {"name": user}

        def create_repo(api, repo_id, private=False, exist_ok=False, **kwargs):
            hub._call("create_repo", api)
            hub.created = {"repo_id": repo_id, "private": private, "exist_ok": exist_ok}
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(api, repo_id, folder_path, commit_message=None, ignore_patterns=None, **kwargs):
            hub._call("upload_folder", api)
            folder, ignored = Path(folder_path), list(ignore_patterns or [])
            files = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}
            hub.uploaded = {
                "repo_id": repo_id,
                "commit_message": commit_message,
                "files": {
                    name: path.read_bytes()
                    for name, path in files.items()
                    if not any(fnmatch.fnmatch(name, pattern) for pattern in ignored)
                },
            }

        for name, function in (("whoami", whoami), ("create_repo", create_repo), ("upload_folder", upload_folder)):
            monkeypatch.setattr(huggingface_hub.HfApi, name, function)

    def record(self, event: str) -> None:
        self.events.append(event)

    def _call(self, name: str, api: Any) -> None:
        self.events.append(name)
        self.tokens.append(api.token)
        if name == self.fail:
            raise FakeHubError(f"403 Forbidden: {name} refused for token {self.secret}")


# ---------------------------------------------------------------------------------------------------------------------
# Subprocesses that cannot outlive their test
# ---------------------------------------------------------------------------------------------------------------------


def start_process_tree(command: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
    """`subprocess.Popen(command)` in a new session: the command and everything it starts (torchrun's workers, their
    data workers) share one process group that [`kill_process_tree`] ends at once. Output is captured as text unless
    `stdout`/`stderr` are given."""
    popen_kwargs.setdefault("stdout", subprocess.PIPE)
    popen_kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(list(command), start_new_session=True, text=True, **popen_kwargs)


def kill_process_tree(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to every process of `process`'s group (started by [`start_process_tree`]); none left is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def process_tree_alive(process: subprocess.Popen) -> bool:
    """Whether any process of `process`'s group is still running (after the command itself exited: orphans)."""
    try:
        os.killpg(process.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def run_process_tree(
    command: Sequence[str], timeout: float, tail: int = 6000, **popen_kwargs: Any
) -> subprocess.CompletedProcess:
    """Run `command` in its own session and return its `CompletedProcess` (text output). Raises `AssertionError`
    with the output's tail when it runs past `timeout` seconds or leaves processes behind; in both cases, and when the
    caller is interrupted, the whole process group is killed first, so no worker outlives the test.

    Size `timeout` to the work (a tiny two-process run: about 2 minutes), never to "long enough for anything".
    """
    process = start_process_tree(command, **popen_kwargs)
    try:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_process_tree(process)
            stdout, stderr = process.communicate()
            raise AssertionError(
                f"{' '.join(map(str, command))[:300]} ran past {timeout:.0f} s and was killed with its process "
                f"group. Output's tail:\n{_tail(stdout, stderr, tail)}"
            ) from None
        if process_tree_alive(process):
            kill_process_tree(process)
            raise AssertionError(
                f"{' '.join(map(str, command))[:300]} exited with {process.returncode} but left processes running "
                f"(killed). Output's tail:\n{_tail(stdout, stderr, tail)}"
            )
    finally:
        if process.returncode is None:  # interrupted while waiting: the command and its tree are still running
            kill_process_tree(process)
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _tail(stdout: str | None, stderr: str | None, size: int) -> str:
    return f"--- stdout ---\n{(stdout or '')[-size // 3 :]}\n--- stderr ---\n{(stderr or '')[-size:]}"


__all__ = [
    "FakeHub",
    "FakeHubError",
    "HostSyncError",
    "forbid_host_sync",
    "fresh_accelerator",
    "kill_process_tree",
    "process_tree_alive",
    "relative_difference",
    "run_process_tree",
    "start_process_tree",
    "steps_without_host_sync",
    "synthetic_crops",
    "tiny_config",
    "tiny_training_step",
    "warmup_values",
]
