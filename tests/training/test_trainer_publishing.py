"""How a pretraining run publishes (the trainer with `dino_hf.publishing`, `dino_hf.distributed` and the card of
`dino_hf.model_card`): the Hub token stays secret, the repository exists before step 1, the uploaded card, failures
raise on every process. Fine-tuning: tests/evaluation/test_finetuning.py; the pieces alone: tests/test_publishing.py,
tests/test_model_card.py.

Only the `HfApi` boundary (`whoami`, `create_repo`, `upload_folder`) is faked (`dino_hf.testing_utils.FakeHub`).
"""

import logging
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from test_pretrain import tiny_run
from torchrun_helpers import run_two_processes

from dino_hf.distributed import MainProcessError
from dino_hf.publishing import HubPublishingError
from dino_hf.testing_utils import FakeHub
from dino_hf.training import DinoTrainingArguments, pretrain


SECRET = "hf_dinoSecretToken0123456789abcdefXYZ"


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("embedded")


def test_the_arguments_never_show_the_token():
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
    result = pretrain(*args, step_callback=lambda step, *_: hub.record(f"step {step}"))
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


@pytest.mark.parametrize("fail", ["whoami", "create_repo"])
def test_login_or_repo_failure_stops_before_training(tmp_path, embedded_cache, monkeypatch, fail):
    hub = FakeHub(monkeypatch, fail=fail, secret=SECRET)
    args = tiny_run(tmp_path, embedded_cache, training={"push_to_hub": True, "hub_token": SECRET, "max_steps": 2})
    with pytest.raises(HubPublishingError, match="--push_to_hub") as error:
        pretrain(*args, step_callback=lambda step, *_: hub.record(f"step {step}"))
    assert not [e for e in hub.events if e.startswith("step")]
    assert SECRET not in str(error.value)


def test_upload_failure_raises(tmp_path, embedded_cache, monkeypatch):
    hub = FakeHub(monkeypatch, fail="upload_folder", secret=SECRET)
    args = tiny_run(tmp_path, embedded_cache, training={"push_to_hub": True, "hub_token": SECRET, "max_steps": 1})
    with pytest.raises(HubPublishingError, match="Uploading") as error:
        pretrain(*args, step_callback=lambda step, *_: hub.record(f"step {step}"))
    assert hub.events[-1] == "upload_folder" and SECRET not in str(error.value)
    assert (tmp_path / "export" / "model.safetensors").exists()  # the export is kept for a later upload


def test_a_main_process_failure_raises_on_every_process_without_hanging(tmp_path):
    """Two CPU processes (gloo): the main process's failure reaches the other one, which would otherwise wait."""
    run_two_processes(Path(__file__).parent / "main_process_worker.py", str(tmp_path))
    outcomes = {rank: (tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)}
    assert outcomes[0] == "ok 'alice/run'|raised RuntimeError: upload refused"
    assert outcomes[1] == (
        f"ok None|raised {MainProcessError.__name__}: Uploading failed on the main process: RuntimeError: upload refused"
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
