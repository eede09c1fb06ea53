"""Shared test set-up: offline, deterministic, small."""

import os
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from dino_hf.testing_utils import tiny_config  # noqa: E402, F401  (its home; `from conftest import tiny_config` still works)


FIXTURES = Path(__file__).parent / "fixtures"

# Under pytest-xdist each worker gets one thread, so workers do not fight over the cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def reference() -> dict[str, torch.Tensor]:
    """The reference implementation's tensors on a tiny random configuration (see fixtures/README.md)."""
    return load_file(FIXTURES / "dino_reference_tiny.safetensors")


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory):
    """A saved random tiny backbone with its image processor (mean 0.5, std 0.25), for the evaluation CLIs."""
    from dino_hf import DinoViTModel
    from dino_hf.evaluation import save_model_with_processor
    from dino_hf.image_processing_dino import dino_image_processor

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_model")
    processor = dino_image_processor(image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    save_model_with_processor(DinoViTModel(tiny_config()), folder, processor)
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# A fake, offline Hugging Face Hub cache
# ---------------------------------------------------------------------------------------------------------------------

FAKE_HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"


def dino_vits16_config(**overrides):
    """facebook/dino-vits16's config.json values (a transformers ViTConfig), with `overrides`."""
    from transformers import ViTConfig

    values = dict(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-12,
        image_size=224,
        patch_size=16,
        num_channels=3,
        qkv_bias=True,
    )
    return ViTConfig(**{**values, **overrides})


def small_dino_vit(**overrides):
    """A random transformers ViTModel in facebook/dino-vits16's configuration (eps 1e-12, pooler), but small."""
    from transformers import ViTModel

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=32)
    model = ViTModel(dino_vits16_config(**{**small, "patch_size": 8, **overrides}), add_pooling_layer=True)
    with torch.no_grad():  # move every tensor (LayerNorms too) off its initial value, so a misplaced key shows
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    return model.eval()


def write_hub_snapshot(cache: Path, repo_id: str, save, revision: str = FAKE_HUB_REVISION) -> Path:
    """`models--<org>--<name>/{refs/main, snapshots/<revision>/...}`, the Hub cache layout; `save(folder)` fills it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    save(snapshot)
    return snapshot


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """An offline Hub cache (HF_HUB_CACHE) with `facebook/dino-vits16` as the Hub stores it: a transformers ViTModel
    (config.json with model_type "vit", model.safetensors, preprocessor_config.json), small and random.

    Yields `(cache_dir, vit_model)`; `write_hub_snapshot(cache_dir, repo_id, save)` adds repositories.
    """
    from huggingface_hub import constants
    from transformers import ViTImageProcessor

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    vit = small_dino_vit()
    processor = ViTImageProcessor(size={"height": 32, "width": 32})

    def save(folder: Path) -> None:
        vit.save_pretrained(folder)
        processor.save_pretrained(folder)

    write_hub_snapshot(cache, "facebook/dino-vits16", save)
    return cache, vit
