"""Publishing to the Hugging Face Hub: check the login and create the repository before training, share the outcome of
main-process-only work with every process, upload at the end.

- [`create_hub_repo`]: `HfApi.whoami` (fails early without a valid login), the default repository id
  `<user>/<output folder name>` (as the HF Trainer), `create_repo(exist_ok=True)`.
- [`run_on_main_process`]: run a function on the main process only and raise its error on every process, so a
  failed upload never leaves the other processes waiting at a barrier.
- [`upload_to_hub`]: upload an exported folder.

Tokens are only passed to `HfApi`; error messages are scrubbed of them before they are raised or logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar


logger = logging.getLogger(__name__)

T = TypeVar("T")


class HubPublishingError(RuntimeError):
    """Logging in, creating the repository, exporting or uploading failed (on the main process)."""


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "<HUB_TOKEN>") if token else text


def default_repo_id(user: str, output_dir: str | Path, hub_model_id: str | None = None) -> str:
    """`hub_model_id`, under `user`'s namespace when it has none; by default the output folder's name.

    >>> default_repo_id("alice", "outputs/dino-vits16")
    'alice/dino-vits16'
    >>> default_repo_id("alice", "outputs/run", "my-org/dino")
    'my-org/dino'
    """
    name = hub_model_id or Path(output_dir).absolute().name
    return name if "/" in name else f"{user}/{name}"


def create_hub_repo(
    output_dir: str | Path, hub_model_id: str | None = None, *, token: str | None = None, private: bool = False
) -> str:
    """Check the Hub login and create (or find) the repository; returns its id. Call before training starts."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        user = api.whoami()["name"]
    except Exception as error:
        raise HubPublishingError(
            "--push_to_hub: could not check the Hub login (run `hf auth login`, set HF_TOKEN or pass --hub_token; "
            f"HF_HUB_OFFLINE must be unset): {_scrub(str(error), token)}"
        ) from None
    repo_id = default_repo_id(user, output_dir, hub_model_id)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    except Exception as error:
        raise HubPublishingError(
            f"--push_to_hub: could not create or find the Hub repository {repo_id!r} as {user!r}: "
            f"{_scrub(str(error), token)}"
        ) from None
    logger.info("Hub repository %s is ready; the exported model is uploaded there after training.", repo_id)
    return repo_id


def prepare_hub_repo(accelerator: Any, training_args: Any, output_dir: str | Path) -> str | None:
    """[`create_hub_repo`] on the main process before training: the repository id there (None on the other
    processes, which upload nothing); its error raised on every process."""
    return run_on_main_process(
        accelerator,
        lambda: create_hub_repo(
            output_dir,
            training_args.hub_model_id,
            token=training_args.hub_token,
            private=training_args.hub_private_repo,
        ),
        "Preparing the Hub repository",
    )


def upload_to_hub(folder: str | Path, repo_id: str, *, token: str | None = None) -> str:
    """Upload an exported folder (model, processor, card, pictures) to an existing repository; returns its id."""
    from huggingface_hub import HfApi

    try:
        HfApi(token=token).upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message="Upload DINO model trained with dino_hf"
        )
    except Exception as error:
        raise HubPublishingError(f"Uploading {folder} to {repo_id!r} failed: {_scrub(str(error), token)}") from None
    logger.info("Pushed %s to https://huggingface.co/%s", folder, repo_id)
    return repo_id


def run_on_main_process(accelerator: Any, function: Callable[[], T], description: str) -> T | None:
    """`function()` on the main process only; its error, if any, is raised on every process.

    The main process runs `function` and broadcasts its error message (empty on success); the others wait in that
    broadcast (instead of a barrier the main process might never reach) and raise [`HubPublishingError`] with the
    message when it failed. The main process re-raises the original exception and returns the result; the others
    return None. All processes then pass a barrier, so they return (or raise) together.
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
        raise HubPublishingError(f"{description} failed on the main process: {message}")
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


__all__ = [
    "HubPublishingError",
    "create_hub_repo",
    "default_repo_id",
    "prepare_hub_repo",
    "run_on_main_process",
    "upload_to_hub",
]
