"""The folders of a dino_hf training run, as the loaders and the trainer both read them: `checkpoint-<step>` folders
(`trainer_state.json`, with the model config, written last; `model.safetensors`, the whole `DinoForSelfDistillation`
state) under a run's `output_dir`, and its `export/`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `output_dir`, oldest first. Temporary folders of unfinished writes are ignored."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / TRAINER_STATE_NAME).exists():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / TRAINER_STATE_NAME).read_text())


def load_model_state(checkpoint: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    device = torch.device(device)
    # safetensors knows "cpu", not "cpu:0" (what a CPU process of a distributed run may be given).
    return load_file(str(checkpoint / "model.safetensors"), device="cpu" if device.type == "cpu" else str(device))


__all__ = ["CHECKPOINT_PREFIX", "TRAINER_STATE_NAME", "list_checkpoints", "load_model_state", "load_trainer_state"]
