"""Publishing a model folder to the Hugging Face Hub, for pretraining (`--push_to_hub`), `dino-hf-export` and
fine-tuning alike: check the login and create the repository before training, upload at the end, never leak the token.

- [`create_hub_repo`]: `HfApi.whoami` (fails early without a valid login), the default repository id
  `<user>/<output folder name>` (as the HF Trainer), `create_repo(exist_ok=True)`.
- [`upload_to_hub`]: upload a saved folder to that repository; [`push_to_hub`]: both at once.
- [`mask_secrets`], [`masked_arguments`]: settings with every `*_token` masked, for whatever is written or logged.

Tokens are only passed to `HfApi`; error messages are scrubbed of them before they are raised or logged. In a run of
many processes, call these on the main process (`dino_hf.distributed.run_on_main_process`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)


class HubPublishingError(RuntimeError):
    """Logging in, creating the repository or uploading failed."""


def mask_secrets(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with every `*_token` entry replaced by `<NAME_TOKEN>`, as transformers' `TrainingArguments.to_dict`
    does, so a Hub token never reaches a file, a log line, a tracker or a model card.

    >>> mask_secrets({"hub_token": "hf_secret", "lr": 0.001})
    {'hub_token': '<HUB_TOKEN>', 'lr': 0.001}
    """
    return {k: f"<{k.upper()}>" if k.endswith("_token") else v for k, v in values.items()}


def masked_arguments(*arguments: Any) -> dict[str, Any]:
    """The fields of argument dataclasses merged into one dict, secrets masked ([`mask_secrets`]): what a run writes
    into its state and summary files, the tracker's hyper-parameters and the model card."""
    merged: dict[str, Any] = {}
    for item in arguments:
        merged.update(asdict(item))
    return mask_secrets(merged)


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


def upload_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    ignore_patterns: Sequence[str] | None = None,
    commit_message: str = "Upload DINO model trained with dino_hf",
) -> str:
    """Upload a saved folder (model, processor, card, pictures) to an existing repository; returns its id.

    `ignore_patterns`: files to leave out (e.g. a fine-tuning run's `checkpoint-*` folders).
    """
    from huggingface_hub import HfApi

    try:
        HfApi(token=token).upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=commit_message,
            ignore_patterns=list(ignore_patterns) if ignore_patterns else None,
        )
    except Exception as error:
        raise HubPublishingError(f"Uploading {folder} to {repo_id!r} failed: {_scrub(str(error), token)}") from None
    logger.info("Pushed %s to https://huggingface.co/%s", folder, repo_id)
    return repo_id


def push_to_hub(
    folder: str | Path, repo_id: str | None = None, *, token: str | None = None, private: bool = False
) -> str:
    """Create (or find) the Hub repository and upload a saved folder: [`create_hub_repo`], then [`upload_to_hub`].

    `repo_id` defaults to `<user>/<folder name>`.
    """
    repo_id = create_hub_repo(folder, repo_id, token=token, private=private)
    return upload_to_hub(folder, repo_id, token=token)


__all__ = [
    "HubPublishingError",
    "create_hub_repo",
    "default_repo_id",
    "mask_secrets",
    "masked_arguments",
    "push_to_hub",
    "upload_to_hub",
]
