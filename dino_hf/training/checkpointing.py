"""Training checkpoints that resume exactly, written atomically, with no pickle anywhere.

A checkpoint is a folder `checkpoint-<step>/`:

| file | content |
|---|---|
| `model.safetensors` | student, teacher and center (`DinoForSelfDistillation.state_dict()`) |
| `optimizer.safetensors`, `optimizer.json` | the optimizer's tensors and the rest of its state dict |
| `rng_state_<rank>.safetensors`, `rng_state_<rank>.json` | every random generator of each process |
| `trainer_state.json` | step, images seen, total batch, data-stream position of each process, grad-scaler state, metrics, arguments |

It resumes on any number of processes and data workers (see [`resume_position`], [`restore_rng`] and the data
loader's elastic resume); with the same ones, bit for bit. It is written into a hidden temporary folder and renamed into place only when complete, so a run killed while
saving leaves the previous checkpoint as the latest loadable one (and one killed while deleting an old checkpoint
leaves no half-deleted `checkpoint-N`). Only the last `save_total_limit` are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file

# The folder layout of a run (names, listing, reading a checkpoint's model) is in dino_hf.run_folders, which the
# loaders (dino_hf.hub) read too; re-exported here.
from ..run_folders import (  # noqa: E402
    CHECKPOINT_PREFIX,
    TRAINER_STATE_NAME,
    list_checkpoints,
    load_model_state,
    load_trainer_state,
)
from .monitoring import NON_FINITE_ADVICE, NonFiniteLossError


# ---------------------------------------------------------------------------------------------------------------------
# Tensors + JSON instead of pickle
# ---------------------------------------------------------------------------------------------------------------------


def _split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested structure by a `{"__tensor__": key}` reference collected in `tensors`."""
    if isinstance(obj, torch.Tensor):
        key = prefix.strip(".") or "value"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f"Cannot serialise dict keys of types {sorted({type(k).__name__ for k in obj})}.")
        return {
            "__dict__": [[k, _split_tensors(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()],
        }
    if isinstance(obj, tuple):
        return {"__tuple__": [_split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    raise TypeError(f"Cannot serialise {type(obj).__name__} without pickle.")


def _join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _join_tensors(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_join_tensors(v, tensors) for v in obj["__tuple__"])
        if "__dtype__" in obj:
            return getattr(torch, obj["__dtype__"])
        raise ValueError(f"Unknown serialised object with keys {sorted(obj)}.")
    if isinstance(obj, list):
        return [_join_tensors(v, tensors) for v in obj]
    return obj


def save_structure(obj: Any, directory: Path, name: str) -> None:
    """Write a nested structure of tensors and plain values as `<name>.safetensors` + `<name>.json`."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_tensors(obj, "", tensors)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    _write_json(directory / f"{name}.json", skeleton)


def load_structure(directory: Path, name: str, device: str | torch.device = "cpu") -> Any:
    tensors = load_file(str(directory / f"{name}.safetensors"), device=str(device))
    return _join_tensors(json.loads((directory / f"{name}.json").read_text()), tensors)


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w") as handle:
        json.dump(value, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------------------------------
# Random number generators
# ---------------------------------------------------------------------------------------------------------------------


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every generator a training step draws from: python, numpy, torch (CPU and accelerators) and named extras."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    for name, generator in (generators or {}).items():
        state[f"generator_{name}"] = generator.get_state()
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch_cpu"].cpu())
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["torch_cuda"]])
    for name, generator in (generators or {}).items():
        key = f"generator_{name}"
        if key not in state:
            raise KeyError(f"The checkpoint has no state for the generator {name!r}.")
        generator.set_state(state[key].cpu())


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoint folders
# ---------------------------------------------------------------------------------------------------------------------


def resolve_checkpoint(spec: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """`"latest"` -> the newest complete checkpoint in `output_dir`; a path -> that checkpoint (checked)."""
    if str(spec) == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint in {output_dir}.")
        return checkpoints[-1]
    path = Path(spec)
    if not (path / TRAINER_STATE_NAME).exists():
        raise FileNotFoundError(f"{path} is not a complete dino_hf checkpoint (no {TRAINER_STATE_NAME}).")
    return path


def staging_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """The temporary folder a checkpoint is written into (the same for every process)."""
    return Path(output_dir) / f".{CHECKPOINT_PREFIX}{step}.tmp"


def begin_checkpoint(output_dir: str | os.PathLike, step: int) -> Path:
    """Create an empty staging folder (main process only)."""
    staging = staging_dir(output_dir, step)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def save_model_and_optimizer(
    staging: Path, model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any]
) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(staging / "model.safetensors"))
    save_structure(optimizer_state, staging, "optimizer")


def save_rng(staging: Path, rank: int, generators: dict[str, torch.Generator] | None = None) -> None:
    save_structure(capture_rng_state(generators), staging, f"rng_state_{rank}")


def finish_checkpoint(
    output_dir: str | os.PathLike, step: int, trainer_state: dict[str, Any], save_total_limit: int | None = None
) -> Path:
    """Write the trainer state last, rename the staging folder into place, then drop the oldest checkpoints."""
    staging = staging_dir(output_dir, step)
    _write_json(staging / TRAINER_STATE_NAME, trainer_state)
    for child in staging.iterdir():
        with open(child, "rb") as handle:
            os.fsync(handle.fileno())
    target = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    if target.exists():
        _remove_checkpoint(target)
    os.replace(staging, target)
    if save_total_limit is not None and save_total_limit > 0:
        for old in list_checkpoints(output_dir)[:-save_total_limit]:
            _remove_checkpoint(old)
    for leftover in Path(output_dir).glob(f".{CHECKPOINT_PREFIX}*.deleting"):  # of a run killed while deleting
        shutil.rmtree(leftover, ignore_errors=True)
    return target


def _remove_checkpoint(path: Path) -> None:
    """Rename the folder out of the checkpoints' names first, then delete it: a run killed while deleting leaves a
    hidden `.checkpoint-N.deleting` folder, never a `checkpoint-N` that looks complete but lacks files."""
    doomed = path.with_name(f".{path.name}.deleting")
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def load_optimizer_state(checkpoint: Path) -> dict[str, Any]:
    return load_structure(checkpoint, "optimizer")


def load_rng(checkpoint: Path, rank: int, generators: dict[str, torch.Generator] | None = None) -> None:
    path = checkpoint / f"rng_state_{rank}.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{checkpoint} has no random state for process {rank}; resume with the number of processes it was "
            "saved with."
        )
    restore_rng_state(load_structure(checkpoint, f"rng_state_{rank}"), generators)


# ---------------------------------------------------------------------------------------------------------------------
# Resuming on another number of processes
# ---------------------------------------------------------------------------------------------------------------------


def saved_total_batch(trainer_state: dict[str, Any]) -> int:
    """Images per optimizer step of the run that wrote `trainer_state` (older checkpoints: from its arguments)."""
    if "total_batch" in trainer_state:
        return int(trainer_state["total_batch"])
    return int(trainer_state["args"]["per_device_train_batch_size"]) * int(trainer_state["world_size"])


def resume_position(trainer_state: dict[str, Any], total_batch: int) -> tuple[int, int]:
    """`(global_step, images_seen)` from which a run with `total_batch` images per step continues.

    The schedules are functions of the images seen (`schedules(images_seen / total_batch)`), so a run resumed with
    another total batch (another number of processes) continues every schedule where it was; its step counter
    becomes `images_seen // total_batch`. With the same total batch the saved step is kept as it is.

    Example:

    ```python
    >>> resume_position({"global_step": 30, "total_batch": 64, "world_size": 2}, total_batch=32)
    (60, 1920)
    ```
    """
    saved_batch = saved_total_batch(trainer_state)
    images_seen = int(trainer_state.get("images_seen", trainer_state["global_step"] * saved_batch))
    if saved_batch == total_batch:
        return int(trainer_state["global_step"]), images_seen
    return images_seen // total_batch, images_seen


def restore_rng(
    checkpoint: Path,
    trainer_state: dict[str, Any],
    rank: int,
    world_size: int,
    seed: int,
    generators: dict[str, torch.Generator] | None = None,
) -> bool:
    """Restore this process's random state; True when exact.

    With the saved number of processes every generator continues exactly. With another number, no saved state
    belongs to this process: every generator is re-seeded from `(seed, rank, images seen)`, so each process draws
    different, reproducible augmentations and drop-path masks (a run cannot be bit-exact across a change of layout).
    """
    if trainer_state["world_size"] == world_size:
        load_rng(checkpoint, rank, generators)
        return True
    images_seen = trainer_state.get("images_seen", trainer_state["global_step"])
    words = np.random.SeedSequence([seed, rank, int(images_seen)]).generate_state(4, dtype=np.uint32).tolist()
    random.seed(words[0])
    np.random.seed(words[1])
    torch.manual_seed(words[2])  # also every CUDA device
    for index, generator in enumerate((generators or {}).values()):
        generator.manual_seed(words[3] + index)
    return False


# ---------------------------------------------------------------------------------------------------------------------
# Orchestration: what the trainer calls
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ResumePoint:
    """Where a resumed run continues: its checkpoint, step, images seen, metric history, data-stream states and, for a
    run with a time budget, its plan (`BudgetPlan.to_dict()`)."""

    checkpoint: Path
    global_step: int
    images_seen: int
    history: list[dict[str, Any]]
    stream_states: list[dict[str, Any] | None] | None
    time_budget: dict[str, Any] | None = None


def resume_training(
    spec: str | os.PathLike,
    output_dir: str | os.PathLike,
    accelerator: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    *,
    seed: int,
    total_batch: int,
) -> ResumePoint:
    """Load the checkpoint `spec` (`"latest"` or a folder) into `model`, `optimizer`, the grad scaler and the random
    generators of this process. Any number of processes and workers: exact with the saved ones, elastic otherwise
    (docs/training.md)."""
    checkpoint = resolve_checkpoint(spec, output_dir)
    state = load_trainer_state(checkpoint)
    model.load_state_dict(load_model_state(checkpoint, accelerator.device))
    optimizer.load_state_dict(load_optimizer_state(checkpoint))
    if state.get("scaler") and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    restore_rng(checkpoint, state, accelerator.process_index, accelerator.num_processes, seed, generators)
    global_step, images_seen = resume_position(state, total_batch)
    return ResumePoint(
        checkpoint, global_step, images_seen, state["history"], state["stream_states"], state.get("time_budget")
    )


def save_training_checkpoint(
    accelerator: Any,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    output_dir: str | os.PathLike,
    global_step: int,
    stream_state: dict[str, Any] | None,
    trainer_state: dict[str, Any],
    save_total_limit: int | None = None,
) -> Path | None:
    """Atomic checkpoint on every process: each writes its random state into the staging folder, the main process
    the model, optimizer, stream positions of every process, grad-scaler state and `trainer_state` (history,
    arguments, ...). Returns the checkpoint folder on the main process, None on the others.

    Raises `NonFiniteLossError` (before writing anything) when a parameter is NaN or infinite: a non-finite model
    must never replace the last good checkpoint.
    """
    finite = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
    if not bool(finite):
        raise NonFiniteLossError(
            f"Parameters are NaN or infinite at step {global_step}; not saving. " + NON_FINITE_ADVICE
        )
    world_size = accelerator.num_processes
    stream_states = gather_object([stream_state]) if world_size > 1 else [stream_state]
    if accelerator.is_main_process:
        begin_checkpoint(output_dir, global_step)
    accelerator.wait_for_everyone()
    save_rng(staging_dir(output_dir, global_step), accelerator.process_index, generators)
    accelerator.wait_for_everyone()
    path = None
    if accelerator.is_main_process:
        save_model_and_optimizer(staging_dir(output_dir, global_step), model.state_dict(), optimizer.state_dict())
        state = {
            "global_step": global_step,
            "world_size": world_size,
            "stream_states": stream_states,
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            **trainer_state,
        }
        path = finish_checkpoint(output_dir, global_step, state, save_total_limit)
    accelerator.wait_for_everyone()
    return path
