"""How a run of many processes shares work, ends and fails.

- [`run_on_main_process`]: work that only the main process does; its failure raises on every process, so a failed Hub
  call or export never leaves the other processes waiting at a barrier. Pretraining uses it for the Hub repository
  (before training) and the export and upload (after); fine-tuning for the Hub repository.
- [`broadcast_count`]: the main process's integer on every process.
- [`finish_run`]: the ordered end of a pretraining run on every process (final barrier, trackers, release of the
  DDP-wrapped model, process group destroyed), so that no process hangs in a process group's destructor at exit.
- [`report_failure`]: on an exception, names the process that failed first and makes sure this process exits.
"""

from __future__ import annotations

import atexit
import faulthandler
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar


T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Seconds every process waits at the final barrier for the slowest one (all have finished training and export).
FINAL_BARRIER_TIMEOUT_S = 300.0
#: Seconds a process of a run of many processes may take from the final barrier, or from its error, to its exit
#: (trackers, process group, interpreter shutdown) before it is ended with `os._exit(1)` and its threads' stacks.
EXIT_TIMEOUT_S = 120.0
#: Seconds a process that failed because another one failed first waits before raising, so that the launcher
#: (torchrun) sees the first failure first, reports it as the root cause and stops this process.
FOLLOWER_GRACE_S = 5.0

_exit_watchdog_at_exit = False


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


# ---------------------------------------------------------------------------------------------------------------------
# The end of a run
# ---------------------------------------------------------------------------------------------------------------------


def finish_run(
    accelerator: Any,
    release: Callable[[], None] | None = None,
    barrier_timeout_s: float = FINAL_BARRIER_TIMEOUT_S,
    exit_timeout_s: float = EXIT_TIMEOUT_S,
) -> None:
    """End a run on every process, in an order that cannot deadlock.

    1. Final barrier: every process has finished its last collective (the export's broadcast included) before any
       process tears anything down. On gloo it is a `monitored_barrier` that fails after `barrier_timeout_s`, naming
       the processes that did not arrive; on NCCL a barrier under the process group's timeout.
    2. Trackers finished (the first half of `accelerator.end_training()`).
    3. `release()`: the caller drops its references to the DDP-wrapped model (and whatever holds it, such as the
       training step); accelerate's are dropped by `accelerator.free_memory()`; a garbage collection then destroys
       DDP's reducer now, while every process is alive and the process group's threads are idle, instead of at the
       caller's return (where a two-process gloo run hung, joining a thread of the process group the reducer held).
    4. The process group destroyed (`accelerator.state.destroy_process_group()`, the second half of `end_training`).

    In a run of many processes, steps 2-4 run under a watchdog: a process that has not finished them within
    `exit_timeout_s` prints its threads' stacks and exits with status 1 (`faulthandler`). With one process there is
    no barrier and no process group; the trackers and references are released all the same.
    """
    import torch.distributed as dist

    many = accelerator.num_processes > 1 and dist.is_available() and dist.is_initialized()
    if many:
        _final_barrier(dist, barrier_timeout_s)
        _arm_exit_watchdog(exit_timeout_s)
    try:
        for tracker in accelerator.trackers:
            tracker.finish()
        accelerator.trackers = []
        if release is not None:
            release()
        accelerator.free_memory()  # accelerate's references to the prepared model and optimizer; collects garbage
        gc.collect()
        accelerator.state.destroy_process_group()
    finally:
        if many:
            faulthandler.cancel_dump_traceback_later()


def _final_barrier(dist: Any, timeout_s: float) -> None:
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)
    else:
        dist.barrier()


def _arm_exit_watchdog(timeout_s: float) -> None:
    """In `timeout_s` seconds, unless cancelled: print every thread's stack and `os._exit(1)`. `faulthandler`'s
    watchdog is a C thread: it fires even when the interpreter is shutting down (where a hung process group destructor
    runs) and when the main thread is blocked in C++."""
    stream = sys.__stderr__ if sys.__stderr__ is not None else sys.stderr
    try:
        faulthandler.dump_traceback_later(timeout_s, exit=True, file=stream)
    except (AttributeError, OSError, RuntimeError, ValueError) as error:  # no file descriptor to write the stacks to
        logger.warning("No exit watchdog (%s): this process may wait in its process group's teardown.", error)


# ---------------------------------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------------------------------


def report_failure(
    accelerator: Any,
    error: BaseException,
    exit_timeout_s: float = EXIT_TIMEOUT_S,
    follower_grace_s: float = FOLLOWER_GRACE_S,
) -> None:
    """Called with the exception that ends a run of many processes, on the process that raises it (before it
    propagates); does nothing with one process.

    - The first failing process records `process R: <error>` in the launcher's key-value store; every failing process
      adds a note to its exception and logs it: `Raised on process R of N` and, on a process that failed because
      another one failed first (e.g. `Connection closed by peer` in a collective), which process failed first and
      its error.
    - A process that did not fail first waits `follower_grace_s` seconds, so that torchrun reports the first failure
      as the root cause and stops this process.
    - The exit is bounded: a process still alive `exit_timeout_s` seconds after its interpreter began to shut down
      (e.g. waiting in a process group's destructor) prints its threads' stacks and exits with status 1.

    The other processes stop in bounded time: torchrun (and `accelerate launch`) stops them when this process exits
    non-zero; under another launcher, a process waiting in a collective with this one fails when the connection
    closes (gloo) or at the process group's timeout (NCCL), and reports the failure as above.
    """
    global _exit_watchdog_at_exit
    if accelerator is None or accelerator.num_processes <= 1:
        return
    rank, world = accelerator.process_index, accelerator.num_processes
    if not _exit_watchdog_at_exit:  # armed at interpreter exit: a caller that catches the error is not cut short
        atexit.register(_arm_exit_watchdog, exit_timeout_s)
        _exit_watchdog_at_exit = True
    first = None if isinstance(error, MainProcessError) else _first_failure(rank, f"{type(error).__name__}: {error}")
    if first is None or first[0] == rank:
        note = f"Raised on process {rank} of {world}."
    else:
        note = f"Raised on process {rank} of {world} after process {first[0]} failed first: {first[1]}"
    error.add_note(note)
    logger.error("%s (%s: %s)", note, type(error).__name__, str(error)[:500])
    if first is not None and first[0] != rank:
        time.sleep(follower_grace_s)


def _first_failure(rank: int, message: str, size: int = 2000) -> tuple[int, str] | None:
    """The first failure of the run recorded in the store, `(rank, message)`: ours if no process recorded one
    before. None without a reachable store."""
    try:
        from torch.distributed import distributed_c10d

        store = distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=10))
        # One key per launch attempt: torchrun keeps its store across restarts (--max_restarts).
        key = f"dino_hf/first_failure/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        recorded = store.compare_set(key, "", f"{rank}\n{message[:size]}").decode(errors="replace")
        first_rank, _, first_message = recorded.partition("\n")
        return int(first_rank), first_message
    except Exception as store_error:  # no process group, or its store is gone: say nothing rather than guess
        logger.debug("No failure record: %s", store_error)
        return None


__all__ = ["MainProcessError", "broadcast_count", "finish_run", "report_failure", "run_on_main_process"]
