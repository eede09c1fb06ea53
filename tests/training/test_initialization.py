"""Pretraining from released weights (`--model_name_or_path dino-vits16`) and from official full checkpoints."""

import argparse
import json
import re
import shutil

import pytest
import torch
from test_pretrain import tiny_run

from dino_hf import DinoConfig, DinoForSelfDistillation, DinoViTModel
from dino_hf.training import DinoModelArguments, pretrain
from dino_hf.training import checkpointing as ckpt
from dino_hf.training.initialization import initial_model
from dino_hf.training.trainer import build_model_config


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("embedded")


def assert_same_weights(module, state, prefix=""):
    """Equal up to the rounding of the teacher's EMA of an identical student (a random tensor would be far off)."""
    own = module.state_dict()
    assert sorted(own) == sorted(k[len(prefix) :] for k in state if k.startswith(prefix))
    different = [k for k, v in own.items() if not torch.allclose(v, state[prefix + k], rtol=1e-5, atol=1e-6)]
    assert not different, different


def test_pretraining_starts_from_the_released_backbone_with_a_new_head(fake_hub, tmp_path, embedded_cache):
    released = DinoViTModel.from_pretrained("dino-vits16").state_dict()
    # lr 0: two steps leave the weights where they started, so the run's model shows its initialisation.
    args = tiny_run(
        tmp_path / "run",
        embedded_cache,
        model={"model_name_or_path": "dino-vits16"},
        training={"lr": 0.0, "min_lr": 0.0, "max_steps": 2},
    )
    result = pretrain(*args)
    model = result.model
    assert result.global_step == 2 and model.config.layer_norm_eps == 1e-6
    assert_same_weights(model.student.backbone, released)
    assert_same_weights(model.teacher.backbone, released)
    assert model.config.out_dim == 64 and model.config.drop_path_rate == 0.1  # the run's head and stochastic depth
    summary = json.loads((result.export_dir / "training_summary.json").read_text())
    assert summary["base_model"] == "facebook/dino-vits16"
    state = ckpt.load_trainer_state(ckpt.list_checkpoints(tmp_path / "run")[-1])
    assert state["base_model"] == "facebook/dino-vits16"


def test_flags_that_contradict_the_released_backbone_are_an_error(fake_hub):
    base = dict(model_name_or_path="dino-vits16", patch_size=8, out_dim=64, arch="vit_tiny")
    overrides = "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,head_hidden_dim=64,head_bottleneck_dim=16"
    for changes, message in (
        ({"patch_size": 4}, "--patch_size gives patch_size=4, the model has 8"),
        ({"config_overrides": overrides.replace("num_hidden_layers=2", "num_hidden_layers=3")}, "num_hidden_layers=3"),
        ({"arch": "vit_base", "config_overrides": None}, "--arch gives hidden_size=768"),
    ):
        model_args = DinoModelArguments(**{**base, "config_overrides": overrides, **changes})
        config = DinoConfig.from_preset(model_args.arch, patch_size=model_args.patch_size)
        if model_args.config_overrides:
            for item in model_args.config_overrides.split(","):
                key, value = item.split("=")
                setattr(config, key, int(value))
        with pytest.raises(ValueError, match=re.escape(message)):
            initial_model(model_args, config)
    # A backbone's head is new: head flags are free. Flags left at their defaults follow the model.
    start = initial_model(DinoModelArguments(model_name_or_path="dino-vits16", out_dim=32), DinoConfig(out_dim=32))
    assert start.model.config.out_dim == 32 and start.model.config.patch_size == 8
    assert start.model_args.patch_size == 8 and start.kind == "backbone"


# ---------------------------------------------------------------------------------------------------------------------
# Official full checkpoints
# ---------------------------------------------------------------------------------------------------------------------

_TO_REFERENCE = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.", r"blocks.\1.attn."),
    (r"^encoder\.layer\.(\d+)\.", r"blocks.\1."),
    (r"^layernorm\.", "norm."),
]


def reference_network(network, prefix=""):
    """A DinoBackboneWithHead's state dict in the reference's names (`backbone.blocks.0.attn.qkv.weight`, ...)."""
    out = {}
    for key, value in network.state_dict().items():
        if key.startswith("backbone."):
            name = key[len("backbone.") :]
            for pattern, replacement in _TO_REFERENCE:
                name, count = re.subn(pattern, replacement, name)
                if count:
                    break
            key = f"backbone.{name}"
        out[prefix + key] = value.clone()
    return out


@pytest.fixture
def official_checkpoint(tmp_path):
    """A full checkpoint in the layout of the reference's main_dino.py (`torch.save` of student with the DDP
    `module.` prefix, teacher, dino_loss with the center, optimizer, epoch and the run's argparse Namespace)."""
    config = DinoConfig(
        image_size=32, patch_size=8, hidden_size=192, num_hidden_layers=1, num_attention_heads=3, out_dim=64,
        head_hidden_dim=64, head_bottleneck_dim=16, drop_path_rate=0.05, norm_last_layer=False,
    )  # fmt: skip
    model = DinoForSelfDistillation(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
        model.center.center.normal_()
    args = argparse.Namespace(
        arch="vit_tiny", patch_size=8, out_dim=64, norm_last_layer=False, drop_path_rate=0.05, teacher_temp=0.04,
        use_bn_in_head=False, lr=0.0005, epochs=100, data_path="/datasets/imagenet/train",
    )  # fmt: skip
    checkpoint = {
        "student": reference_network(model.student, "module."),
        "teacher": reference_network(model.teacher),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
        "epoch": 100,
        "args": args,
        "dino_loss": {"center": model.center.center.clone()},
    }
    path = tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    torch.save(checkpoint, path)
    return path, model


def run_args(output_dir, cache, source, **model):
    """tiny_run, with the model flags at their defaults except the source (the checkpoint decides the model)."""
    defaults = {k: getattr(DinoModelArguments(), k) for k in ("arch", "patch_size", "out_dim", "config_overrides")}
    return tiny_run(output_dir, cache, model={**defaults, "model_name_or_path": str(source), **model})


def test_an_official_full_checkpoint_continues_with_its_heads_and_center(official_checkpoint, tmp_path, monkeypatch):
    path, expected = official_checkpoint
    model_args, data_args, _ = run_args(tmp_path / "run", tmp_path, path)
    start = initial_model(model_args, build_model_config(model_args, data_args))
    assert start.kind == "run" and start.base_model == str(path)
    assert_same_weights(start.model, expected.state_dict())
    config = start.model.config
    assert (config.drop_path_rate, config.teacher_temp, config.norm_last_layer) == (0.05, 0.04, False)  # the args
    assert (start.model_args.out_dim, start.model_args.patch_size, start.model_args.arch) == (64, 8, "custom")

    # The official URL: torch.hub's downloader (faked at the network boundary) into torch.hub's cache.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    downloads = []
    monkeypatch.setattr(
        torch.hub, "download_url_to_file", lambda url, dst, **kw: downloads.append(url) or shutil.copy(path, dst)
    )
    url = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain_full_checkpoint.pth"
    for _ in range(2):  # downloaded once, then read from the cache
        model_args, data_args, _ = run_args(tmp_path / "run", tmp_path, url)
        start = initial_model(model_args, build_model_config(model_args, data_args))
        assert_same_weights(start.model, expected.state_dict())
    assert downloads == [url] and start.base_model == url

    for flags, message in (({"out_dim": 128}, "--out_dim gives out_dim=128, the model has 64"),
                           ({"drop_path_rate": 0.2}, "--drop_path_rate gives drop_path_rate=0.2")):  # fmt: skip
        model_args, data_args, _ = run_args(tmp_path / "run", tmp_path, path, **flags)
        with pytest.raises(ValueError, match=re.escape(message)):
            initial_model(model_args, build_model_config(model_args, data_args))


def test_pretraining_continues_an_official_full_checkpoint(official_checkpoint, tmp_path, embedded_cache):
    path, expected = official_checkpoint
    model_args, data_args, training_args = run_args(tmp_path / "run", embedded_cache, path)
    # lr 0: the student stays the checkpoint's student; the teacher moves towards it by the EMA.
    training_args.max_steps, training_args.lr, training_args.min_lr = 2, 0.0, 0.0
    after_first_step = []

    def record(step, batch, output, model):
        if step == 1:
            after_first_step.append({k: v.clone() for k, v in model.state_dict().items()})

    result = pretrain(model_args, data_args, training_args, step_callback=record)
    assert result.global_step == 2
    start, state = expected.state_dict(), after_first_step[0]
    assert_same_weights(result.model.student, start, "student.")
    momentum = training_args.momentum_teacher  # the EMA's first value
    for key in (k for k in start if k.startswith("teacher.")):
        student_key = "student." + key[len("teacher.") :]
        ema = momentum * start[key] + (1 - momentum) * start[student_key]
        assert torch.allclose(state[key], ema, rtol=1e-5, atol=1e-6), key
    # The center continues from the checkpoint's (a new one would start at zero): one EMA step keeps 90% of it.
    assert (
        torch.corrcoef(torch.stack([state["center.center"].flatten(), start["center.center"].flatten()]))[0, 1] > 0.9
    )
    summary = json.loads((result.export_dir / "training_summary.json").read_text())
    assert summary["base_model"] == str(path) and summary["arch"] == "custom" and summary["patch_size"] == 8
