"""What a user gets when following the docs with the wrong thing in hand: a training folder where a model is expected
loads its teacher (as the README promises), and each error names the cause and what to do next."""

import urllib.error

import pytest
import torch
from test_pretrain import tiny_run
from transformers import AutoModel

from dino_hf import DinoForSelfDistillation, DinoViTModel
from dino_hf.cli import export as export_cli
from dino_hf.cli import knn_eval
from dino_hf.hub import load_backbone
from dino_hf.testing_utils import FakeHub
from dino_hf.training import pretrain


SECRET = "hf_dinoSecretToken0123456789abcdefXYZ"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished two-step run: `export/` and `checkpoint-1`, `checkpoint-2`, no config.json at its top."""
    output = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("embedded")
    pretrain(*tiny_run(output, cache, training={"max_steps": 2, "checkpointing_steps": 1}))
    return output


def _features(model):
    with torch.no_grad():
        return model.eval()(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))).pooler_output


@pytest.mark.parametrize("where", ["output_dir", "checkpoint-2"])
def test_a_run_folder_or_checkpoint_loads_its_teacher_everywhere(run_dir, where):
    folder = run_dir if where == "output_dir" else run_dir / "checkpoint-2"
    assert not (folder / "config.json").exists()
    expected = _features(load_backbone(run_dir / "export"))
    for loader in (AutoModel.from_pretrained, load_backbone, DinoViTModel.from_pretrained):
        model = loader(str(folder))
        assert type(model) is DinoViTModel  # not a default ViT-S with 150 tensors left random
        torch.testing.assert_close(_features(model), expected)


def test_a_run_without_export_or_complete_checkpoint_says_how_to_get_a_model(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()  # interrupted before its trainer state was written
    for loader in (AutoModel.from_pretrained, load_backbone):
        with pytest.raises(FileNotFoundError, match="dino-hf-export"):
            loader(str(tmp_path))


def test_released_resnet_offline_names_the_url_and_the_local_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def unreachable(url, dst, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    with pytest.raises(OSError, match=r"Could not download https://.*unreachable.*HF_HUB_OFFLINE.*checkpoints"):
        load_backbone("dino_resnet50")
    with pytest.raises(
        OSError, match=r"Could not download https://.*from_official_checkpoint\('path/to/dino_resnet50"
    ):
        DinoForSelfDistillation.from_pretrained("dino_resnet50")  # the full checkpoint, the same message


@pytest.mark.parametrize("path", ["./outputs/run/exprot", "outputs/run/exprot", "/no/such/model/"])
def test_a_mistyped_local_path_says_it_does_not_exist(path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        knn_eval.run(["--model_name_or_path", path])


def test_export_push_to_hub_takes_the_hub_token_its_message_names(run_dir, tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch, user="alice")
    argv = [str(run_dir / "checkpoint-2"), str(tmp_path / "exported"), "--push_to_hub", "--hub_token", SECRET]
    folder = export_cli.run(argv)
    assert hub.uploaded["repo_id"] == "alice/exported" and set(hub.tokens) == {SECRET}
    assert "config.json" in hub.uploaded["files"] and folder == tmp_path / "exported"
    failing = FakeHub(monkeypatch, fail="whoami", secret=SECRET)
    with pytest.raises(Exception, match="--hub_token") as error:
        export_cli.run(argv)
    assert SECRET not in str(error.value) and failing.events == ["whoami"]
