"""Publishing to the Hub: secrets masked, the default repository id, the login checked before the repository is
created, the upload, and every failure raised with the token scrubbed from its message. (How a pretraining run and a
fine-tuning use it: tests/training/test_trainer_publishing.py, tests/evaluation/test_finetuning.py.)"""

import pytest

from dino_hf.publishing import (
    HubPublishingError,
    create_hub_repo,
    default_repo_id,
    mask_secrets,
    masked_arguments,
    push_to_hub,
    upload_to_hub,
)
from dino_hf.testing_utils import FakeHub
from dino_hf.training import DinoTrainingArguments


SECRET = "hf_dinoSecretToken0123456789abcdefXYZ"


def test_mask_secrets_as_transformers_training_arguments():
    assert mask_secrets({"hub_token": "x", "push_to_hub_token": "y", "lr": 1.0}) == {
        "hub_token": "<HUB_TOKEN>",
        "push_to_hub_token": "<PUSH_TO_HUB_TOKEN>",
        "lr": 1.0,
    }
    masked = masked_arguments(DinoTrainingArguments(hub_token=SECRET, lr=0.1))
    assert masked["hub_token"] == "<HUB_TOKEN>" and masked["lr"] == 0.1


def test_default_repo_id_is_the_output_folder_under_the_user():
    assert default_repo_id("alice", "outputs/dino-vits16/") == "alice/dino-vits16"
    assert default_repo_id("alice", "outputs/x", "my-dino") == "alice/my-dino"
    assert default_repo_id("alice", "outputs/x", "org/my-dino") == "org/my-dino"


def test_push_checks_the_login_creates_the_repo_then_uploads(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch, user="alice")
    folder = tmp_path / "dino-tiny"
    (folder / "checkpoint-1").mkdir(parents=True)
    (folder / "README.md").write_text("card")
    (folder / "checkpoint-1" / "state.json").write_text("{}")
    assert push_to_hub(folder, token=SECRET, private=True) == "alice/dino-tiny"
    assert hub.events == ["whoami", "create_repo", "upload_folder"] and set(hub.tokens) == {SECRET}
    assert hub.created == {"repo_id": "alice/dino-tiny", "private": True, "exist_ok": True}
    assert set(hub.uploaded["files"]) == {"README.md", "checkpoint-1/state.json"}
    upload_to_hub(folder, "alice/dino-tiny", ignore_patterns=["checkpoint-*"], commit_message="classifier")
    assert set(hub.uploaded["files"]) == {"README.md"} and hub.uploaded["commit_message"] == "classifier"


@pytest.mark.parametrize("fail", ["whoami", "create_repo", "upload_folder"])
def test_every_failure_raises_without_the_token(tmp_path, monkeypatch, fail):
    hub = FakeHub(monkeypatch, fail=fail, secret=SECRET)
    with pytest.raises(HubPublishingError) as error:
        push_to_hub(tmp_path, token=SECRET)
    assert hub.events[-1] == fail and SECRET not in str(error.value) and "<HUB_TOKEN>" in str(error.value)
    if fail != "upload_folder":  # nothing is uploaded once the login or the repository failed
        assert "upload_folder" not in hub.events
        with pytest.raises(HubPublishingError, match="--push_to_hub"):
            create_hub_repo(tmp_path, token=SECRET)
