"""The pretraining loop end to end on the embedded dataset: export, exact resume, NaN stop, collapse warning.

Publishing to the Hub: test_trainer_publishing.py.
"""

import json
import logging
import math

import pytest
import torch
from transformers import AutoModel, ViTModel

from dino_hf import DinoViTModel
from dino_hf.training import (
    DinoDataArguments,
    DinoModelArguments,
    DinoTrainingArguments,
    NonFiniteLossError,
    pretrain,
)
from dino_hf.training import checkpointing as ckpt


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("embedded")


def tiny_run(output_dir, cache_dir, *, model=None, data=None, training=None):
    model_args = DinoModelArguments(
        **{
            "arch": "vit_tiny",
            "patch_size": 8,
            "config_overrides": "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,head_hidden_dim=64,"
            "head_bottleneck_dim=16",
            "out_dim": 64,
            "drop_path_rate": 0.1,
            **(model or {}),
        }
    )
    data_args = DinoDataArguments(
        **{
            "dataset_name": "embedded",
            "embedded_options": json.dumps(
                {"train_per_class": 4, "validation_per_class": 2, "num_shards": 2, "cache_dir": str(cache_dir)}
            ),
            "global_crops_size": 32,
            "local_crops_size": 16,
            "local_crops_number": 2,
            "num_workers": 0,
            "shuffle_buffer_size": 16,
            **(data or {}),
        }
    )
    training_args = DinoTrainingArguments(
        **{
            "output_dir": str(output_dir),
            "per_device_train_batch_size": 4,
            "epochs": 2,
            "steps_per_epoch": 4,
            "warmup_epochs": 1,
            "warmup_teacher_temp_epochs": 1,
            "logging_steps": 1,
            "checkpointing_steps": 100,
            "progress_bar": False,
            "lr": 0.01,
            **(training or {}),
        }
    )
    return model_args, data_args, training_args


def losses(history):
    return [record["loss"] for record in history if "loss" in record]


def test_pretrain_end_to_end_exports_a_loadable_model(tmp_path, embedded_cache):
    args = tiny_run(
        tmp_path / "run",
        embedded_cache,
        data={"knn_at_start_and_end": True, "knn_train_samples": 40, "knn_eval_samples": 20, "knn_k": 5},
        training={"export_vit_model": True},
    )
    result = pretrain(*args)
    assert result.global_step == 8
    assert len(losses(result.history)) == 8 and all(math.isfinite(v) for v in losses(result.history))
    for key in ("teacher_entropy", "kl_divergence", "lr", "weight_decay", "momentum", "teacher_temp"):
        assert key in result.history[-2] or key in result.history[-1]
    knn = [r["knn_top1"] for r in result.history if "knn_top1" in r]
    assert len(knn) == 2 and all(0.0 <= v <= 1.0 for v in knn)
    assert result.final_metrics["knn_top1_at_start"] == knn[0]
    assert 0.0 <= result.final_metrics["pixel_knn_top1"] <= 1.0  # the raw pixels' k-NN, measured at step 0
    assert "pixel_knn_top1" in result.history[0] and result.history[0]["step"] == 0

    export = result.export_dir
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_dino.py"):
        assert (export / name).exists(), name
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = result.model.teacher.backbone.eval()(pixels).pooler_output
        for loaded in (DinoViTModel.from_pretrained(export), AutoModel.from_pretrained(export)):
            assert type(loaded) is DinoViTModel
            torch.testing.assert_close(loaded.eval()(pixels).pooler_output, expected)
        vit = ViTModel.from_pretrained(export / "vit").eval()
        torch.testing.assert_close(vit(pixels).last_hidden_state[:, 0], expected, atol=1e-5, rtol=1e-5)
    card = (export / "README.md").read_text()
    assert "pipeline_tag: image-feature-extraction" in card and "| steps | 8 |" in card and "knn_top1" in card
    assert "pixel_knn_top1" in card
    processor = json.loads((export / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 32, "width": 32}
    assert processor["image_mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_resume_continues_the_loss_curve_exactly(tmp_path, embedded_cache):
    uninterrupted = pretrain(*tiny_run(tmp_path / "a", embedded_cache))

    def stop_after_five(step, batch, output, model):
        if step == 5:
            raise KeyboardInterrupt("simulated kill")

    interrupted_args = tiny_run(tmp_path / "b", embedded_cache, training={"checkpointing_steps": 4})
    with pytest.raises(KeyboardInterrupt):
        pretrain(*interrupted_args, step_callback=stop_after_five)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "b")] == ["checkpoint-4"]
    resumed_args = tiny_run(
        tmp_path / "b", embedded_cache, training={"checkpointing_steps": 4, "resume_from_checkpoint": "latest"}
    )
    resumed = pretrain(*resumed_args)
    assert resumed.global_step == 8
    # Bit-exact on CPU in fp32: the same losses, the same teacher, the same center.
    assert losses(resumed.history) == losses(uninterrupted.history)
    for (name, a), b in zip(uninterrupted.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, embedded_cache):
    def poison(step, batch, output, model):
        if step == 3:
            with torch.no_grad():
                model.student.backbone.embeddings.cls_token.fill_(float("nan"))

    args = tiny_run(tmp_path, embedded_cache, training={"checkpointing_steps": 2})
    with pytest.raises(NonFiniteLossError, match="lower --lr"):
        pretrain(*args, step_callback=poison)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-2"]
    state = ckpt.load_model_state(ckpt.resolve_checkpoint("latest", tmp_path))
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_collapse_warning_when_the_teacher_is_uniform(tmp_path, embedded_cache, caplog):
    args = tiny_run(tmp_path, embedded_cache, training={"teacher_temp": 100.0, "warmup_teacher_temp": 100.0})
    with caplog.at_level(logging.WARNING, logger="dino_hf"):
        pretrain(*args)
    assert "Possible collapse" in caplog.text and "uniform" in caplog.text


def test_metrics_reach_tensorboard(tmp_path, embedded_cache):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = tiny_run(tmp_path, embedded_cache, training={"report_to": "tensorboard", "max_steps": 3})
    pretrain(*args)
    event_files = list(tmp_path.rglob("events.out.tfevents.*"))
    assert event_files
    events = EventAccumulator(str(event_files[0].parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("train/loss", "train/teacher_entropy", "train/kl_divergence", "train/lr", "train/momentum"):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]


def test_a_nan_crop_is_skipped_the_run_stops_and_the_newest_checkpoint_is_intact(
    tmp_path, embedded_cache, monkeypatch
):
    from dino_hf.data import DinoMultiCropAugmentation

    calls = {"n": 0}
    original = DinoMultiCropAugmentation.forward

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # the third step's crops
            out.global_crops[0, 0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(DinoMultiCropAugmentation, "forward", poisoned)
    seen = {}

    def record(step, batch, output, model):
        if step in (2, 3):
            seen[step] = {k: v.clone() for k, v in model.state_dict().items()}
        if step == 3:  # checkpoint-2 is on disk: remember its bytes
            seen["files"] = {p.name: p.read_bytes() for p in (tmp_path / "checkpoint-2").iterdir() if p.is_file()}

    # Logging every 5 steps: the flag is read before the checkpoint at step 4, not at a logging step.
    args = tiny_run(tmp_path, embedded_cache, training={"checkpointing_steps": 2, "logging_steps": 5})
    with pytest.raises(NonFiniteLossError, match="Loss is nan, stopping training.*lower --lr"):
        pretrain(*args, step_callback=record)
    # The poisoned step 3 changed nothing: student, teacher, center (the optimizer state is covered in test_step).
    for name, value in seen[2].items():
        assert torch.equal(seen[3][name], value), name
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-2"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoint-2").iterdir() if p.is_file()} == seen["files"]


def test_gradient_accumulation_and_three_global_crops_in_a_run(tmp_path, embedded_cache):
    args = tiny_run(
        tmp_path,
        embedded_cache,
        data={"augmentation_overrides": json.dumps({"global_crops_number": 3})},
        training={"gradient_accumulation_steps": 2, "max_steps": 2, "steps_per_epoch": None},
    )
    result = pretrain(*args)
    # Two optimizer steps of 2 micro-batches of 4 images; the schedules count optimizer steps: an epoch of the
    # 40-image embedded set is 40 // (4 * 2) = 5 of them.
    assert result.global_step == 2 and len(losses(result.history)) == 2
    assert all(math.isfinite(v) for v in losses(result.history))
    assert result.history[-1]["epoch"] == pytest.approx(1 / 5)


def test_resnet50_recipe_trains_two_steps_and_exports_a_resnet(tmp_path, embedded_cache):
    from transformers import ResNetModel

    args = tiny_run(
        tmp_path / "run",
        embedded_cache,
        model={
            "arch": "resnet50",
            "config_overrides": "resnet_embedding_size=8,resnet_hidden_sizes=[16,32,32,64],resnet_depths=[1,1,1,1],"
            "head_hidden_dim=32,head_bottleneck_dim=16",
        },
        data={
            "global_crops_scale": [0.14, 1.0],
            "local_crops_scale": [0.05, 0.14],
            # The k-NN monitor reads a ResNet's pooled feature (it failed on the (N, C, 1, 1) map at step 0).
            "knn_at_start_and_end": True,
            "knn_train_samples": 40,
            "knn_eval_samples": 20,
            "knn_k": 5,
        },
        training={"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4, "weight_decay_end": 1e-4, "max_steps": 2},
    )
    result = pretrain(*args)
    assert result.global_step == 2 and all(math.isfinite(v) for v in losses(result.history))
    knn = [r["knn_top1"] for r in result.history if "knn_top1" in r]
    assert len(knn) == 2 and all(0.0 <= v <= 1.0 for v in knn)
    assert result.model.config.backbone == "resnet" and result.model.config.resnet_depths == [1, 1, 1, 1]
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = result.model.teacher.backbone.eval()(pixels).pooler_output
        for loaded in (ResNetModel.from_pretrained(result.export_dir), AutoModel.from_pretrained(result.export_dir)):
            assert type(loaded) is ResNetModel
            torch.testing.assert_close(loaded.eval()(pixels).pooler_output, expected)
