"""Work that only the main process does, in a run of many processes: [`run_on_main_process`] runs it there and raises
its failure on every process, so a failed Hub call or export never leaves the other processes waiting at a barrier.

Pretraining uses it for the Hub repository (before training) and the export and upload (after); fine-tuning for the
Hub repository.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar


T = TypeVar("T")


class MainProcessError(RuntimeError):
    """Raised on the other processes when the main process's work failed; the message is the main process's error."""


def run_on_main_process(accelerator: Any, function: Callable[[], T], description: str) -> T | None:
    """`function()` on the main process only; its error, if any, is raised on every process.

    The main process runs `function` and broadcasts its error message (empty on success); the others wait in that
    broadcast (instead of a barrier the main process might never reach) and raise [`MainProcessError`] with the
    message when it failed. The main process re-raises the original exception and returns the result; the others
    return None. All processes then pass a barrier, so they return (or raise) together.

    Args:
        accelerator: an `accelerate.Accelerator` (or `PartialState`): `is_main_process`, `num_processes`, `device`,
            `wait_for_everyone()`.
        function: the main process's work.
        description: what it does, for the other processes' error message.
    """
    result, failure = None, None
    if accelerator.is_main_process:
        try:
            result = function()
        except Exception as error:
            failure = error
    message = f"{type(failure).__name__}: {failure}" if failure is not None else None
    if accelerator.num_processes > 1:
        message = _broadcast_message(accelerator, message)
        accelerator.wait_for_everyone()
    if failure is not None:
        raise failure
    if message is not None:
        raise MainProcessError(f"{description} failed on the main process: {message}")
    return result


def _broadcast_message(accelerator: Any, message: str | None, size: int = 4096) -> str | None:
    """The main process's `message` on every process, as a fixed-size byte tensor (first byte: 1 if there is one).

    A plain tensor broadcast: with `broadcast_object_list` instead, a two-process gloo run hung in about one of four
    tries in the process group's destructor at exit (torch 2.6).
    """
    import torch
    from accelerate.utils import broadcast

    data = torch.zeros(size + 1, dtype=torch.uint8)
    if message is not None:
        encoded = message.encode()[:size]
        data[0] = 1
        data[1 : 1 + len(encoded)] = torch.frombuffer(bytearray(encoded), dtype=torch.uint8)
    data = broadcast(data.to(accelerator.device), from_process=0).cpu()
    if not int(data[0]):
        return None
    return bytes(data[1:].tolist()).rstrip(b"\0").decode(errors="replace")


def broadcast_count(accelerator: Any, value: int) -> int:
    """The main process's integer `value` on every process (a collective: every process must call it)."""
    import torch
    from accelerate.utils import broadcast

    return int(broadcast(torch.tensor([value], dtype=torch.long, device=accelerator.device), from_process=0).item())


__all__ = ["MainProcessError", "broadcast_count", "run_on_main_process"]
