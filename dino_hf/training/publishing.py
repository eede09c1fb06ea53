"""Publishing to the Hugging Face Hub: check the login and create the repository before training, share the outcome of
main-process-only work with every process, upload at the end.

- [`create_hub_repo`]: `HfApi.whoami` (fails early without a valid login), the default repository id
  `<user>/<output folder name>` (as the HF Trainer), `create_repo(exist_ok=True)`.
- [`run_on_main_process`]: run a function on the main process only and give every process its result, or raise its
  error on every process, so a failed upload never leaves the other processes waiting at a barrier.
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


def prepare_hub_repo(accelerator: Any, training_args: Any, output_dir: str | Path) -> str:
    """[`create_hub_repo`] on the main process before training; every process gets the id or raises its error."""
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


def run_on_main_process(accelerator: Any, function: Callable[[], T], description: str) -> T:
    """`function()` on the main process; every process returns its (picklable) result or raises its error.

    The main process runs `function` and broadcasts `(result, error message)`; the others wait in that broadcast
    (instead of a barrier the main process might never reach) and raise [`HubPublishingError`] with the main
    process's message when it failed. The main process re-raises the original exception. All processes pass a
    barrier after the broadcast, so they return (or raise) together.
    """
    outcome: list[Any] = [None, None]
    failure: BaseException | None = None
    if accelerator.is_main_process:
        try:
            outcome[0] = function()
        except Exception as error:
            failure = error
            outcome[1] = f"{type(error).__name__}: {error}"
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(outcome, from_process=0)
        # Everyone has the outcome; leave together (a process that tears down its process group while another is
        # still using it can hang in gloo's destructor, seen with torch 2.6).
        accelerator.wait_for_everyone()
    if failure is not None:
        raise failure
    if outcome[1] is not None:
        raise HubPublishingError(f"{description} failed on the main process: {outcome[1]}")
    return outcome[0]


__all__ = [
    "HubPublishingError",
    "create_hub_repo",
    "default_repo_id",
    "prepare_hub_repo",
    "run_on_main_process",
    "upload_to_hub",
]
