"""Publishing: the Hub token stays secret, the repository exists before step 1, the model card, failures raise.

Only the `HfApi` boundary (`whoami`, `create_repo`, `upload_folder`) is faked.
"""

import logging
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard
from test_pretrain import tiny_run
from torchrun_helpers import run_two_processes

from dino_hf.testing_utils import tiny_config
from dino_hf.training import DinoTrainingArguments, pretrain
from dino_hf.training.arguments import mask_secrets
from dino_hf.training.export import model_card
from dino_hf.training.publishing import HubPublishingError, default_repo_id


SECRET = "hf_dinoSecretToken0123456789abcdefXYZ"


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("embedded")


class FakeHub:
    """Records the `HfApi` calls (and the token each was made with) in order; `fail` names a call that raises."""

    def __init__(self, monkeypatch, user="alice", fail=None):
        self.events, self.tokens, self.uploaded = [], [], {}
        hub = self

        def whoami(api, token=None, **kwargs):
            hub._call("whoami", api)
            return {"name": user}

        def create_repo(api, repo_id, private=False, exist_ok=False, **kwargs):
            hub._call("create_repo", api)
            hub.created = {"repo_id": repo_id, "private": private, "exist_ok": exist_ok}
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(api, repo_id, folder_path, commit_message=None, **kwargs):
            hub._call("upload_folder", api)
            folder = Path(folder_path)
            hub.uploaded = {
                "repo_id": repo_id,
                "files": {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()},
            }

        self.fail = fail
        for name, function in (("whoami", whoami), ("create_repo", create_repo), ("upload_folder", upload_folder)):
            monkeypatch.setattr(huggingface_hub.HfApi, name, function)

    def _call(self, name, api):
        self.events.append(name)
        self.tokens.append(api.token)
        if name == self.fail:
            raise huggingface_hub.errors.HfHubHTTPError(f"403 Forbidden: {name} refused for token {SECRET}")

    def step(self, step, batch, output, model):
        self.events.append(f"step {step}")


def test_mask_secrets_as_transformers_training_arguments():
    assert mask_secrets({"hub_token": "x", "push_to_hub_token": "y", "lr": 1.0}) == {
        "hub_token": "<HUB_TOKEN>",
        "push_to_hub_token": "<PUSH_TO_HUB_TOKEN>",
        "lr": 1.0,
    }
    args = DinoTrainingArguments(hub_token=SECRET)
    assert SECRET not in repr(args) and SECRET not in str(args) and "<HUB_TOKEN>" in repr(args)
    assert args.hub_token == SECRET  # still usable in memory


def _files_containing(folder: Path, secret: bytes) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret in p.read_bytes()]


def test_hub_token_reaches_no_file_log_tracker_card_or_upload(tmp_path, embedded_cache, monkeypatch, caplog, capfd):
    pytest.importorskip("tensorboard")
    hub = FakeHub(monkeypatch)
    run = tmp_path / "run"
    args = tiny_run(
        run,
        embedded_cache,
        training={
            "max_steps": 2,
            "report_to": "tensorboard",
            "push_to_hub": True,
            "hub_token": SECRET,
            "checkpointing_steps": 1,
        },
    )
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("dino_hf").info("arguments: %s", args[2])  # what a user's own logging line would show
        pretrain(*args)
    assert hub.tokens and all(token == SECRET for token in hub.tokens)  # the token was used...
    written = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert any("events.out.tfevents" in name for name in written) and any("hparams.yml" in n for n in written)
    assert any(name.endswith("trainer_state.json") for name in written)
    assert "export/training_summary.json" in written and "export/README.md" in written
    assert _files_containing(run, SECRET.encode()) == []  # ...and written nowhere (text or binary)
    assert "<HUB_TOKEN>" in (run / "export" / "training_summary.json").read_text()
    assert not [name for name, data in hub.uploaded["files"].items() if SECRET.encode() in data]
    captured = capfd.readouterr()
    assert SECRET not in caplog.text and SECRET not in captured.out and SECRET not in captured.err


def test_push_creates_the_repo_before_step_one_and_uploads_a_card(tmp_path, embedded_cache, monkeypatch):
    hub = FakeHub(monkeypatch, user="alice")
    output_dir = tmp_path / "dino-tiny-run"
    args = tiny_run(
        output_dir,
        embedded_cache,
        data={"knn_at_start_and_end": True, "knn_train_samples": 40, "knn_eval_samples": 20, "knn_k": 5},
        training={"push_to_hub": True, "max_steps": 2},
    )
    result = pretrain(*args, step_callback=hub.step)
    # Login checked and repository created before the first step, upload after the last.
    assert hub.events == ["whoami", "create_repo", "step 1", "step 2", "upload_folder"]
    assert hub.created == {"repo_id": "alice/dino-tiny-run", "private": False, "exist_ok": True}
    uploaded = hub.uploaded
    assert uploaded["repo_id"] == "alice/dino-tiny-run"
    for name in (
        "README.md",
        "config.json",
        "configuration_dino.py",
        "model.safetensors",
        "modeling_dino.py",
        "preprocessor_config.json",
        "training_curves.png",
        "attention_maps.png",
    ):
        assert name in uploaded["files"], name

    card = ModelCard(uploaded["files"]["README.md"].decode())
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-feature-extraction"
    assert "datasets" not in data and "base_model" not in data  # a local dataset and a random start
    (entry,) = data["model-index"]
    (metric,) = entry["results"][0]["metrics"]
    assert metric["type"] == "accuracy" and metric["value"] == pytest.approx(100 * result.final_metrics["knn_top1"])
    assert entry["results"][0]["dataset"]["split"] == "validation"
    assert "![Training curves](training_curves.png)" in card.text and "(attention_maps.png)" in card.text
    assert "| steps | 2 |" in card.text and "| momentum_teacher | `0.996` |" in card.text
    assert "alice/dino-tiny-run" in card.text


def test_card_metadata_names_the_hub_dataset_and_the_base_model():
    summary = {
        "arch": "vit_small",
        "dataset_name": "timm/imagenet-1k-wds",
        "base_model": "facebook/dino-vits16",
        "hub_model_id": "alice/dino",
        "args": {"hub_token": SECRET, "lr": 0.0005},
    }
    card = model_card(tiny_config(), summary)
    data = card.data.to_dict()
    assert data["datasets"] == ["timm/imagenet-1k-wds"] and data["base_model"] == "facebook/dino-vits16"
    assert "model-index" not in data  # no k-NN measured
    assert SECRET not in str(card) and "<HUB_TOKEN>" in card.text
    from_url = model_card(tiny_config(), {**summary, "base_model": "https://dl.fbaipublicfiles.com/dino/x.pth"})
    assert "base_model" not in from_url.data.to_dict() and "dl.fbaipublicfiles.com" in from_url.text


def test_default_repo_id_is_the_output_folder_under_the_user():
    assert default_repo_id("alice", "outputs/dino-vits16/") == "alice/dino-vits16"
    assert default_repo_id("alice", "outputs/x", "my-dino") == "alice/my-dino"
    assert default_repo_id("alice", "outputs/x", "org/my-dino") == "org/my-dino"


@pytest.mark.parametrize("fail", ["whoami", "create_repo"])
def test_login_or_repo_failure_stops_before_training(tmp_path, embedded_cache, monkeypatch, fail):
    hub = FakeHub(monkeypatch, fail=fail)
    args = tiny_run(tmp_path, embedded_cache, training={"push_to_hub": True, "hub_token": SECRET, "max_steps": 2})
    with pytest.raises(HubPublishingError, match="--push_to_hub") as error:
        pretrain(*args, step_callback=hub.step)
    assert not [e for e in hub.events if e.startswith("step")]
    assert SECRET not in str(error.value)


def test_upload_failure_raises(tmp_path, embedded_cache, monkeypatch):
    hub = FakeHub(monkeypatch, fail="upload_folder")
    args = tiny_run(tmp_path, embedded_cache, training={"push_to_hub": True, "hub_token": SECRET, "max_steps": 1})
    with pytest.raises(HubPublishingError, match="Uploading") as error:
        pretrain(*args, step_callback=hub.step)
    assert hub.events[-1] == "upload_folder" and SECRET not in str(error.value)
    assert (tmp_path / "export" / "model.safetensors").exists()  # the export is kept for a later upload


def test_a_main_process_failure_raises_on_every_process_without_hanging(tmp_path):
    """Two CPU processes (gloo): the main process's failure reaches the other one, which would otherwise wait."""
    run_two_processes(Path(__file__).parent / "hub_worker.py", str(tmp_path))
    outcomes = {rank: (tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)}
    assert outcomes[0] == "ok 'alice/run'|raised RuntimeError: upload refused"
    assert outcomes[1] == (
        "ok None|raised HubPublishingError: Uploading failed on the main process: RuntimeError: upload refused"
    )


def test_export_cli_creates_the_repo_first_then_exports_and_uploads(tmp_path, embedded_cache, monkeypatch):
    from dino_hf import DinoViTModel
    from dino_hf.cli.export import run as export_main
    from dino_hf.training import checkpointing as ckpt

    result = pretrain(*tiny_run(tmp_path / "run", embedded_cache, training={"max_steps": 1}))
    hub = FakeHub(monkeypatch, user="alice")
    folder = export_main([str(ckpt.resolve_checkpoint("latest", tmp_path / "run")), str(tmp_path / "dino-tiny")])
    assert hub.events == []  # no --push_to_hub, no Hub call
    export_main([str(tmp_path / "run" / "checkpoint-1"), str(tmp_path / "dino-tiny"), "--push_to_hub"])
    assert hub.events == ["whoami", "create_repo", "upload_folder"]
    assert hub.created["repo_id"] == hub.uploaded["repo_id"] == "alice/dino-tiny"
    card = ModelCard(hub.uploaded["files"]["README.md"].decode())
    assert card.data.pipeline_tag == "image-feature-extraction" and "alice/dino-tiny" in card.text
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = result.model.teacher.backbone.eval()(pixels).pooler_output
        torch.testing.assert_close(DinoViTModel.from_pretrained(folder).eval()(pixels).pooler_output, expected)
