"""DINO pretraining on accelerate: one `Accelerator`, `prepare`, `accelerator.backward`.

Read `pretrain` top to bottom: set-up, resume, the step (augment on the device -> teacher and student -> loss ->
backward -> clip -> optimizer -> EMA), logging, checkpoints, k-NN, export.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, gather_object, set_seed
from tqdm.auto import tqdm

from ..configuration_dino import DinoConfig
from ..data import (
    DataStats,
    DinoMultiCropAugmentation,
    MultiCropConfig,
    build_pretraining_loader,
    load_image_dataset,
)
from ..modeling_dino import DinoForSelfDistillation, DinoSelfDistillationOutput
from . import checkpointing as ckpt
from .arguments import DinoDataArguments, DinoModelArguments, DinoTrainingArguments, masked_arguments
from .export import publish_run, training_summary
from .initialization import initial_model
from .monitoring import NON_FINITE_ADVICE, CollapseMonitor, MetricAccumulator, NonFiniteLossError, non_finite_error
from .optimization import create_optimizer
from .performance import compile_blocks
from .publishing import prepare_hub_repo, run_on_main_process
from .schedules import DinoSchedules
from .step import DinoTrainingStep, resolve_gradient_accumulation_steps


logger = logging.getLogger(__name__)


@dataclass
class PretrainingResult:
    """What a finished run produced."""

    output_dir: Path
    global_step: int
    history: list[dict[str, float]] = field(default_factory=list)
    final_metrics: dict[str, float] = field(default_factory=dict)
    export_dir: Path | None = None
    data_stats: dict[str, Any] = field(default_factory=dict)
    model: DinoForSelfDistillation | None = None


def resolve_mixed_precision(mode: str) -> str:
    """`auto`: what `accelerate config`/`accelerate launch --mixed_precision` chose, else bf16 on GPUs that have it,
    fp16 (with loss scaling) on other GPUs, and fp32 on CPU."""
    if mode != "auto":
        return mode
    launcher_choice = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher_choice:
        return launcher_choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def build_model_config(model_args: DinoModelArguments, data_args: DinoDataArguments) -> DinoConfig:
    overrides: dict[str, Any] = {
        "image_size": data_args.global_crops_size,
        "out_dim": model_args.out_dim,
        "norm_last_layer": model_args.norm_last_layer,
        "use_bn_in_head": model_args.use_bn_in_head,
        "drop_path_rate": model_args.drop_path_rate,
    }
    for item in filter(None, re.split(r",(?![^\[]*\])", model_args.config_overrides or "")):  # not in [...]
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in DinoConfig.__dataclass_fields__:
            raise ValueError(f"--config_overrides: DinoConfig has no field {key!r}.")
        overrides[key] = _parse_scalar(value.strip())
    return DinoConfig.from_preset(model_args.arch, patch_size=model_args.patch_size, **overrides)


def _parse_scalar(value: str) -> Any:
    if value.startswith("["):
        return json.loads(value)
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def multicrop_config(data_args: DinoDataArguments) -> MultiCropConfig:
    overrides = json.loads(data_args.augmentation_overrides) if data_args.augmentation_overrides else {}
    return MultiCropConfig(
        **{
            **overrides,
            "global_crops_size": data_args.global_crops_size,
            "local_crops_size": data_args.local_crops_size,
            "global_crops_scale": tuple(data_args.global_crops_scale),
            "local_crops_scale": tuple(data_args.local_crops_scale),
            "local_crops_number": data_args.local_crops_number,
        }
    )


StepCallback = Callable[[int, Any, DinoSelfDistillationOutput, DinoForSelfDistillation], None]


def pretrain(  # noqa: C901, PLR0915 (split into DinoPretrainer next)
    model_args: DinoModelArguments,
    data_args: DinoDataArguments,
    training_args: DinoTrainingArguments,
    step_callback: StepCallback | None = None,
) -> PretrainingResult:
    """Pretrain DINO; returns where the checkpoints and the exported teacher backbone are, and the metrics.

    `step_callback(global_step, batch, output, model)`, if given, runs after every optimizer step and EMA update (on
    every process) with the step's `ImageBatch`, its `DinoSelfDistillationOutput` and the unwrapped model, e.g. to
    inspect the data or stop the run by raising.
    """
    # ----------------------------------------------------------------------------------------------- set-up
    output_dir = Path(training_args.output_dir)
    report_to = [] if training_args.report_to == "none" else training_args.report_to.split(",")
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(training_args.mixed_precision),
        gradient_accumulation_steps=resolve_gradient_accumulation_steps(training_args.gradient_accumulation_steps),
        log_with=report_to or None,
        project_dir=str(output_dir),
        # The center is all-reduced inside forward, and the teacher is not trained: no buffer broadcasts needed.
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise NotImplementedError(
            f"dino_hf pretraining runs on DDP (one or many GPUs and machines); {accelerator.distributed_type} is not "
            "supported yet: the teacher EMA and the checkpoints need full parameters on every process. See "
            "docs/training.md (Distributed training)."
        )
    rank, world_size = accelerator.process_index, accelerator.num_processes
    set_seed(training_args.seed)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    # Log in and create the Hub repository now: a publishing problem must stop the run before training, not after.
    hub_model_id = prepare_hub_repo(accelerator, training_args, output_dir) if training_args.push_to_hub else None

    source = load_image_dataset(
        data_args.dataset_name,
        split=data_args.train_split,
        data_files=data_args.data_files,
        streaming=data_args.streaming,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        embedded_options=data_args.embedded_options_dict(),
    )
    total_batch = training_args.per_device_train_batch_size * world_size * accelerator.gradient_accumulation_steps
    steps_per_epoch = training_args.steps_per_epoch
    if steps_per_epoch is None:
        if source.num_examples is None:
            raise ValueError(
                f"The size of {data_args.dataset_name!r} is unknown (a stream without metadata): pass "
                "--steps_per_epoch (e.g. 1281167 // total batch for ImageNet-1k)."
            )
        steps_per_epoch = max(1, source.num_examples // total_batch)
    schedules = DinoSchedules(
        steps_per_epoch=steps_per_epoch,
        epochs=training_args.epochs,
        lr=training_args.lr * total_batch / 256.0,
        min_lr=training_args.min_lr,
        warmup_epochs=training_args.warmup_epochs,
        weight_decay=training_args.weight_decay,
        weight_decay_end=training_args.weight_decay_end,
        momentum_teacher=training_args.momentum_teacher,
        warmup_teacher_temp=training_args.warmup_teacher_temp,
        teacher_temp=training_args.teacher_temp,
        warmup_teacher_temp_epochs=training_args.warmup_teacher_temp_epochs,
        freeze_last_layer=training_args.freeze_last_layer,
    )
    max_steps = schedules.total_steps if training_args.max_steps < 0 else training_args.max_steps

    with accelerator.main_process_first():  # one download of released weights; the other processes read the cache
        start = initial_model(model_args, build_model_config(model_args, data_args))  # random, released, or a run
    model, model_args = start.model, start.model_args
    if model_args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(accelerator.device)
    if model.config.has_batch_norm and world_size > 1:
        if accelerator.device.type in ("cuda", "xpu"):
            # As the reference: BatchNorm statistics (ResNet, head) over the global batch, not each process's share.
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            logger.warning("SyncBatchNorm needs GPUs: BatchNorm uses per-process batch statistics here.")
    optimizer = create_optimizer(
        model.student, schedules.lr, schedules.weight_decay, optimizer=training_args.optimizer
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    dino: DinoForSelfDistillation = accelerator.unwrap_model(model)
    if model_args.torch_compile:
        compile_blocks(dino)

    crop_config = multicrop_config(data_args)
    augment = DinoMultiCropAugmentation(crop_config).to(accelerator.device)
    # Each process draws different crops; the seed makes them reproducible.
    generator = torch.Generator(device=accelerator.device).manual_seed(training_args.seed * 1000 + rank)

    # ----------------------------------------------------------------------------------------------- resume
    global_step, images_seen, history, stream_state = 0, 0, [], None
    if training_args.resume_from_checkpoint:
        checkpoint = ckpt.resolve_checkpoint(training_args.resume_from_checkpoint, output_dir)
        state = ckpt.load_trainer_state(checkpoint)
        dino.load_state_dict(ckpt.load_model_state(checkpoint, accelerator.device))
        optimizer.load_state_dict(ckpt.load_optimizer_state(checkpoint))
        if state.get("scaler") and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        # Any number of processes and workers: exact with the saved ones, elastic otherwise (docs/training.md).
        ckpt.restore_rng(checkpoint, state, rank, world_size, training_args.seed, {"augment": generator})
        (global_step, images_seen), history = ckpt.resume_position(state, total_batch), state["history"]
        stream_state = state["stream_states"]
        logger.info("Resumed from %s at step %d.", checkpoint, global_step)

    loader = build_pretraining_loader(
        source,
        training_args.per_device_train_batch_size,
        num_workers=data_args.num_workers,
        seed=training_args.seed,
        rank=rank,
        world_size=world_size,
        shuffle_buffer_size=data_args.shuffle_buffer_size,
        resume_state=stream_state,
        max_bad_fraction=data_args.max_bad_fraction,
        pin_memory=accelerator.device.type == "cuda",
        # Decode large JPEGs at reduced scale, but never below what the smallest crop needs.
        decode_min_pixels=crop_config.decode_min_pixels,
    )

    if report_to:
        hyperparameters = masked_arguments(model_args, data_args, training_args)
        # Trackers such as TensorBoard take only scalars and strings as hyper-parameters.
        hyperparameters = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hyperparameters.items()
        }
        accelerator.init_trackers("dino_hf", config=hyperparameters)
    knn_monitor = None
    if accelerator.is_main_process and (data_args.knn_every_steps or data_args.knn_at_start_and_end):
        from ..evaluation.knn_monitor import KnnMonitor

        knn_monitor = KnnMonitor.from_arguments(
            data_args, dino.config.image_size, accelerator, mean=crop_config.mean, std=crop_config.std
        )

    def save_checkpoint() -> None:
        if metrics.saw_non_finite():  # a skipped step since the last log: stop before writing anything
            raise non_finite_error(global_step - global_step % training_args.logging_steps, global_step, output_dir)
        _save_checkpoint(
            accelerator,
            dino,
            optimizer,
            generator,
            output_dir,
            global_step,
            last_stream_state,
            history,
            training_args,
            world_size,
            {
                "model_config": dino.config.to_dict(),
                "multicrop_config": asdict(crop_config),
                "base_model": start.base_model,
                "images_seen": images_seen,
                "total_batch": total_batch,
            },
        )

    def run_knn(step: int) -> None:
        # Only the main process evaluates; the others wait at the barrier below.
        if knn_monitor is not None:
            accuracy = knn_monitor(dino.teacher.backbone)
            history.append({"step": step, "knn_top1": accuracy})
            accelerator.log({"eval/knn_top1": accuracy}, step=step)
            logger.info("step %d: k-NN top-1 of the teacher %.2f%%", step, 100 * accuracy)
        accelerator.wait_for_everyone()

    collapse = CollapseMonitor(out_dim=dino.config.out_dim)
    metrics = MetricAccumulator()
    data_stats = _DataStatsLog()
    train_step = DinoTrainingStep(
        accelerator,
        model,
        optimizer,
        training_args.clip_grad,
        training_args.clip_grad_mode,
        num_global_crops=crop_config.global_crops_number,
    )
    progress = tqdm(
        total=max_steps,
        initial=global_step,
        disable=not (accelerator.is_main_process and training_args.progress_bar),
        desc="pretraining",
        unit="step",
    )
    logger.info(
        "Pretraining %s (%.1fM parameters per network) on %s: %d processes x %d images, %d steps/epoch, %d steps.",
        model_args.arch,
        sum(p.numel() for p in dino.student.parameters()) / 1e6,
        source.name,
        world_size,
        training_args.per_device_train_batch_size,
        steps_per_epoch,
        max_steps,
    )

    # ----------------------------------------------------------------------------------------------- loop
    if global_step == 0 and data_args.knn_at_start_and_end:
        run_knn(0)  # the random-initialisation baseline
    model.train()
    window_start, window_images = time.perf_counter(), 0
    last_stream_state = loader.state_dict()
    for batch in loader:
        if global_step >= max_steps:
            break
        values = schedules(images_seen / total_batch)  # = global_step unless resumed with another total batch
        data_stats.add(batch.stats)
        batch = batch.to(accelerator.device, non_blocking=True)
        crops = augment(batch.images, batch.sizes, generator=generator)
        step = train_step(crops.global_crops, crops.local_crops, values)
        last_stream_state = batch.stream_state
        window_images += batch.images.shape[0] * world_size
        if not step.optimizer_step:
            continue  # a micro-batch of gradient accumulation
        output, grad_norm = step.output, step.grad_norm

        global_step += 1
        images_seen += total_batch
        metrics.add(
            non_finite=step.non_finite,
            loss=output.loss,
            teacher_entropy=output.teacher_entropy,
            kl_divergence=output.kl_divergence,
            teacher_mean_entropy=output.teacher_mean_entropy,
            grad_norm=grad_norm,
        )
        progress.update(1)
        if step_callback is not None:
            step_callback(global_step, batch, output, dino)

        # ------------------------------------------------------------------------------ logging
        if global_step % training_args.logging_steps == 0 or global_step == max_steps:
            means, non_finite = metrics.pop()
            if non_finite:
                raise non_finite_error(global_step - training_args.logging_steps, global_step, output_dir)
            elapsed = time.perf_counter() - window_start
            record = {
                "step": global_step,
                "epoch": round(values.epoch, 4),
                **{k: round(v, 6) for k, v in means.items()},
                "lr": values.lr,
                "weight_decay": values.weight_decay,
                "momentum": values.momentum,
                "teacher_temp": values.teacher_temp,
                "images_per_second": round(window_images / max(elapsed, 1e-9), 2),
            }
            history.append(record)
            accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=global_step)
            if accelerator.is_main_process:
                progress.set_postfix(
                    loss=f"{means['loss']:.3f}",
                    H=f"{means['teacher_entropy']:.2f}",
                    img_s=f"{record['images_per_second']:.0f}",
                )
                logger.info(_format_record(record))
                collapse.check(means["teacher_entropy"], means["teacher_mean_entropy"], global_step)
                data_stats.report()
            window_start, window_images = time.perf_counter(), 0

        if data_args.knn_every_steps and global_step % data_args.knn_every_steps == 0 and global_step < max_steps:
            run_knn(global_step)

        if global_step % training_args.checkpointing_steps == 0 and global_step < max_steps:
            save_checkpoint()

    progress.close()
    save_checkpoint()

    # ----------------------------------------------------------------------------------------------- the end
    if data_args.knn_every_steps or data_args.knn_at_start_and_end:
        run_knn(global_step)
    final_metrics = {k: v for k, v in history[-1].items() if k != "step"} if history else {}
    knn_records = [r for r in history if "knn_top1" in r]
    if knn_records:
        final_metrics["knn_top1"] = knn_records[-1]["knn_top1"]
        final_metrics["knn_top1_at_start"] = knn_records[0]["knn_top1"]
    result = PretrainingResult(
        output_dir=output_dir,
        global_step=global_step,
        history=history,
        final_metrics=final_metrics,
        data_stats=data_stats.total.to_dict(),
        model=dino,
    )
    summary = training_summary(
        model_args, data_args, training_args, result, world_size, hub_model_id, base_model=start.base_model
    )
    # Export and upload on the main process; a failure there raises on every process instead of hanging them.
    result.export_dir = run_on_main_process(
        accelerator,
        lambda: publish_run(
            dino,
            output_dir,
            history=history,
            summary=summary,
            crop_config=crop_config,
            data_args=data_args,
            training_args=training_args,
            hub_model_id=hub_model_id,
        ),
        "Exporting (and uploading) the model",
    )
    accelerator.end_training()
    return result


def _save_checkpoint(
    accelerator: Accelerator,
    dino: DinoForSelfDistillation,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    output_dir: Path,
    global_step: int,
    stream_state: dict | None,
    history: list[dict],
    training_args: DinoTrainingArguments,
    world_size: int,
    extra_state: dict[str, Any],
) -> None:
    """Atomic checkpoint: every process writes its random state into the staging folder, the main process the rest."""
    # A non-finite model must never replace the last good checkpoint.
    finite = torch.stack([torch.isfinite(p).all() for p in dino.parameters()]).all()
    if not bool(finite):
        raise NonFiniteLossError(
            f"Parameters are NaN or infinite at step {global_step}; not saving. " + NON_FINITE_ADVICE
        )
    stream_states = gather_object([stream_state]) if world_size > 1 else [stream_state]
    if accelerator.is_main_process:
        staging = ckpt.begin_checkpoint(output_dir, global_step)
    accelerator.wait_for_everyone()
    staging = ckpt.staging_dir(output_dir, global_step)
    ckpt.save_rng(staging, accelerator.process_index, {"augment": generator})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ckpt.save_model_and_optimizer(staging, dino.state_dict(), optimizer.state_dict())
        trainer_state = {
            "global_step": global_step,
            "world_size": world_size,
            "stream_states": stream_states,
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "history": history,
            "args": masked_arguments(training_args),
            **extra_state,
        }
        path = ckpt.finish_checkpoint(output_dir, global_step, trainer_state, training_args.save_total_limit)
        logger.info("Saved %s", path)
    accelerator.wait_for_everyone()


def _format_record(record: dict) -> str:
    parts = [f"step {record['step']}"]
    for key in (
        "epoch",
        "loss",
        "teacher_entropy",
        "kl_divergence",
        "teacher_mean_entropy",
        "grad_norm",
        "lr",
        "weight_decay",
        "momentum",
        "teacher_temp",
        "images_per_second",
    ):
        if key in record:
            value = record[key]
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return " | ".join(parts)


class _DataStatsLog:
    """Accumulates the loader's bad-record counters and reports new skips in the training log."""

    def __init__(self) -> None:
        self.total = DataStats()
        self._reported_skipped = 0

    def add(self, stats: DataStats | None) -> None:
        if stats is not None:
            self.total += stats

    def report(self) -> None:
        if self.total.skipped > self._reported_skipped:
            logger.warning("Data: %s", self.total.summary())
            self._reported_skipped = self.total.skipped
