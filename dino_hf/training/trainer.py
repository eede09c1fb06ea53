"""DINO pretraining on accelerate: one `Accelerator`, `prepare`, `accelerator.backward`.

`DinoPretrainer` runs a pretraining in four phases; read them top to bottom:

1. `setup()`: the accelerator; the arguments become config objects (`DinoConfig`, `MultiCropConfig`,
   `DinoSchedules`); the data source, the model (random, released weights or a run), the optimizer and the
   augmentation on the device.
2. `resume()`: continue from `--resume_from_checkpoint` (checkpointing.py: model, optimizer, random state, position).
3. `train()`: the loader and the monitors, then `train_step_and_log(batch)` per micro-batch: augment on the device ->
   teacher and student -> loss -> backward -> clip -> optimizer -> EMA, then logging, k-NN and checkpoints.
4. `finish()`: the last checkpoint, the last k-NN evaluation, export (and upload to the Hub), then the ordered end
   of the run on every process (`distributed.finish_run`).

With `--time_budget_minutes`, `train()` also follows a `TimeBudget` (time_budget.py): it measures the first steps,
then sets `max_steps` and lays the schedules over the steps that fit.

`pretrain(model_args, data_args, training_args)` runs the four phases; an exception on one process of many names that
process and ends it in bounded time (`distributed.report_failure`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from tqdm.auto import tqdm

from ..configuration_dino import DinoConfig
from ..data import (
    DataStats,
    DinoMultiCropAugmentation,
    ImageSource,
    MultiCropConfig,
    build_pretraining_loader,
    load_image_dataset,
)
from ..data.sources import first_image
from ..distributed import broadcast_count, finish_run, report_failure, run_on_main_process
from ..modeling_dino import DinoForSelfDistillation, DinoSelfDistillationOutput
from ..publishing import create_hub_repo, masked_arguments, upload_to_hub
from . import checkpointing as ckpt
from .arguments import DinoDataArguments, DinoModelArguments, DinoTrainingArguments
from .export import export_run
from .initialization import initial_model
from .monitoring import CollapseMonitor, MetricAccumulator, non_finite_error
from .run_summary import final_metrics, training_summary
from .schedules import DinoSchedules, ScheduleValues
from .step import build_training_step, resolve_gradient_accumulation_steps
from .time_budget import BudgetPlan, TimeBudget, schedule_position


logger = logging.getLogger(__name__)

StepCallback = Callable[[int, Any, DinoSelfDistillationOutput, DinoForSelfDistillation], None]


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


# ---------------------------------------------------------------------------------------------------------------------
# Arguments -> config objects
# ---------------------------------------------------------------------------------------------------------------------


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
    """The `DinoConfig` of the model flags: the `--arch` preset, the flags, then `--config_overrides`."""
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
    """The `MultiCropConfig` of the crop flags and `--augmentation_overrides`."""
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


def build_schedules(training_args: DinoTrainingArguments, steps_per_epoch: int, total_batch: int) -> DinoSchedules:
    """The `DinoSchedules` of the optimisation flags; the learning rate scales linearly with the total batch."""
    return DinoSchedules(
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


def create_accelerator(training_args: DinoTrainingArguments) -> Accelerator:
    """The run's `Accelerator` (DDP on any number of GPUs and machines, or one CPU/GPU process)."""
    report_to = [] if training_args.report_to == "none" else training_args.report_to.split(",")
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(training_args.mixed_precision),
        gradient_accumulation_steps=resolve_gradient_accumulation_steps(training_args.gradient_accumulation_steps),
        log_with=report_to or None,
        project_dir=str(Path(training_args.output_dir)),
        # The center is all-reduced inside forward, and the teacher is not trained: no buffer broadcasts needed.
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise NotImplementedError(
            f"dino_hf pretraining runs on DDP (one or many GPUs and machines); {accelerator.distributed_type} is not "
            "supported yet: the teacher EMA and the checkpoints need full parameters on every process. See "
            "docs/training.md (Distributed training)."
        )
    return accelerator


def load_source(data_args: DinoDataArguments) -> ImageSource:
    """The images to pretrain on."""
    return load_image_dataset(
        data_args.dataset_name,
        split=data_args.train_split,
        data_files=data_args.data_files,
        streaming=data_args.streaming,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        embedded_options=data_args.embedded_options_dict(),
    )


def resolve_steps_per_epoch(
    training_args: DinoTrainingArguments, data_args: DinoDataArguments, source: ImageSource, total_batch: int
) -> int:
    """`--steps_per_epoch`, else the dataset's size over the total batch."""
    if training_args.steps_per_epoch is not None:
        return training_args.steps_per_epoch
    if source.num_examples is None:
        raise ValueError(
            f"The size of {data_args.dataset_name!r} is unknown (a stream without metadata): pass "
            "--steps_per_epoch (e.g. 1281167 // total batch for ImageNet-1k)."
        )
    return max(1, source.num_examples // total_batch)


def knn_source_options(data_args: DinoDataArguments) -> tuple[str, dict[str, Any]]:
    """The dataset of the k-NN evaluation (`--knn_dataset_name`, else the training data) and its `load_image_dataset`
    options: the training data's files and columns when it is the same dataset; another is detected from scratch."""
    options: dict[str, Any] = {"streaming": data_args.streaming}
    if data_args.knn_dataset_name is None:
        options.update(
            data_files=data_args.data_files,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            embedded_options=data_args.embedded_options_dict(),
        )
    return data_args.knn_dataset_name or data_args.dataset_name, options


def build_knn_monitor(data_args: DinoDataArguments, image_size: int, crop_config: MultiCropConfig, device):
    """The k-NN monitor of `--knn_*` (None when the data has no labels), evaluated on the training device."""
    from ..evaluation.knn_monitor import KnnMonitor

    dataset_name, load_options = knn_source_options(data_args)
    return KnnMonitor.from_dataset(
        dataset_name,
        image_size,
        train_split=data_args.knn_train_split,
        eval_split=data_args.knn_eval_split,
        load_options=load_options,
        train_samples=data_args.knn_train_samples,
        eval_samples=data_args.knn_eval_samples,
        k=data_args.knn_k,
        num_workers=min(2, data_args.num_workers),
        mean=crop_config.mean,
        std=crop_config.std,
        device=device,
    )


def validation_image(data_args: DinoDataArguments):
    """The first image of the k-NN evaluation split (the validation split by default), for the model card's attention
    picture; None, with a warning, when it cannot be read."""
    dataset_name, load_options = knn_source_options(data_args)
    try:
        return first_image(load_image_dataset(dataset_name, split=data_args.knn_eval_split, **load_options))
    except Exception as error:
        logger.warning(
            "The model card gets no attention picture: no image in split %r (%s).", data_args.knn_eval_split, error
        )
        return None


# ---------------------------------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------------------------------


class DinoPretrainer:
    """One DINO pretraining run: `setup()`, `resume()`, `train()`, `finish()` (see the module docstring).

    `step_callback(global_step, batch, output, model)`, if given, runs after every optimizer step and EMA update (on
    every process) with the step's `ImageBatch`, its `DinoSelfDistillationOutput` and the unwrapped model, e.g. to
    inspect the data or stop the run by raising. `started_at` (`time.time()` seconds): where `--time_budget_minutes`
    counts from; default: this process's start. `recipe`: the `--recipe auto` choices (`{"flag", "value",
    "reason"}` each), recorded in the summary and the model card.
    """

    def __init__(
        self,
        model_args: DinoModelArguments,
        data_args: DinoDataArguments,
        training_args: DinoTrainingArguments,
        step_callback: StepCallback | None = None,
        started_at: float | None = None,
        recipe: list[dict[str, Any]] | None = None,
    ) -> None:
        self.model_args, self.data_args, self.args = model_args, data_args, training_args
        self.recipe = recipe
        self.step_callback = step_callback
        self.started_at = started_at if started_at is not None else process_start_time()
        self.output_dir = Path(training_args.output_dir)
        self.global_step, self.images_seen, self.history, self.stream_state = 0, 0, [], None
        self.metrics, self.data_stats = MetricAccumulator(), _DataStatsLog()

    # ------------------------------------------------------------------------------------------------ 1. set-up
    def setup(self) -> None:
        """Accelerator, Hub repository (with `--push_to_hub`), config objects, data source, model, optimizer, training
        step and augmentation."""
        args = self.args
        self.accelerator = accelerator = create_accelerator(args)
        self.rank, self.world_size = accelerator.process_index, accelerator.num_processes
        set_seed(args.seed)
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        # Log in and create the Hub repository now: a publishing problem must stop the run before training, not after.
        self.hub_model_id = None
        if args.push_to_hub:  # the repository id on the main process (None on the others, which upload nothing)
            self.hub_model_id = run_on_main_process(
                accelerator,
                lambda: create_hub_repo(
                    self.output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo
                ),
                "Preparing the Hub repository",
            )

        self.source = load_source(self.data_args)
        self.total_batch = args.per_device_train_batch_size * self.world_size * accelerator.gradient_accumulation_steps
        self.steps_per_epoch = resolve_steps_per_epoch(args, self.data_args, self.source, self.total_batch)
        self.schedules = build_schedules(args, self.steps_per_epoch, self.total_batch)
        self.max_steps = self.schedules.total_steps if args.max_steps < 0 else args.max_steps
        self.budget, self.plan = None, None
        if args.time_budget_minutes is not None:  # the length comes from the budget, once measured
            self.budget, self.max_steps = TimeBudget(args.time_budget_minutes, self.started_at), _UNPLANNED
        self.crop_config = multicrop_config(self.data_args)
        self._build_model()
        self.augment = DinoMultiCropAugmentation(self.crop_config).to(accelerator.device)
        # Each process draws different crops; the seed makes them reproducible.
        self.generator = torch.Generator(device=accelerator.device).manual_seed(args.seed * 1000 + self.rank)

    def _build_model(self) -> None:
        accelerator, args = self.accelerator, self.args
        with accelerator.main_process_first():  # one download of released weights; the other processes read the cache
            self.start = initial_model(self.model_args, build_model_config(self.model_args, self.data_args))
        model, self.model_args = self.start.model, self.start.model_args
        # The loss takes the scheduled temperature; the config records the one the run ends with (and exports).
        model.config.teacher_temp = float(self.schedules.teacher_temp)
        setup = build_training_step(
            accelerator,
            model,
            lr=self.schedules.lr,
            weight_decay=self.schedules.weight_decay,
            optimizer=args.optimizer,
            clip_grad=args.clip_grad,
            clip_grad_mode=args.clip_grad_mode,
            num_global_crops=self.crop_config.global_crops_number,
            gradient_checkpointing=self.model_args.gradient_checkpointing,
            torch_compile=self.model_args.torch_compile,
        )
        self.model, self.optimizer, self.train_step = setup.model, setup.optimizer, setup.step
        self.dino: DinoForSelfDistillation = setup.dino

    # ------------------------------------------------------------------------------------------------ 2. resume
    def resume(self) -> None:
        """Continue from `--resume_from_checkpoint`, if given."""
        if not self.args.resume_from_checkpoint:
            return
        point = ckpt.resume_training(
            self.args.resume_from_checkpoint,
            self.output_dir,
            self.accelerator,
            self.dino,
            self.optimizer,
            {"augment": self.generator},
            seed=self.args.seed,
            total_batch=self.total_batch,
        )
        self.global_step, self.images_seen, self.history = point.global_step, point.images_seen, point.history
        self.stream_state = point.stream_states
        if point.time_budget is not None:  # a budgeted run keeps the plan it started with
            self.budget = None
            self._apply_plan(BudgetPlan.from_dict(point.time_budget))
        logger.info("Resumed from %s at step %d.", point.checkpoint, self.global_step)

    # ------------------------------------------------------------------------------------------------ 3. train
    def train(self) -> None:
        """Run `train_step_and_log` on every micro-batch until `max_steps` optimizer steps."""
        self.loader = self._build_loader()
        self._start_monitors()
        knn_start = time.perf_counter()
        if self.global_step == 0 and self.data_args.knn_at_start_and_end:
            self.run_knn()  # the random-initialisation baseline
        if self.budget is not None:
            self.budget.begin(self.global_step, self._finish_estimate(time.perf_counter() - knn_start))
        self.model.train()
        self.window_start, self.window_images = time.perf_counter(), 0
        self.last_stream_state = self.loader.state_dict()
        for batch in self.loader:
            if self.global_step >= self.max_steps:
                break
            self.train_step_and_log(batch)
        self.progress.close()

    def _build_loader(self):
        """This process's share of the data, continuing the saved stream position after a resume."""
        args, data_args = self.args, self.data_args
        return build_pretraining_loader(
            self.source,
            args.per_device_train_batch_size,
            num_workers=data_args.num_workers,
            seed=args.seed,
            rank=self.rank,
            world_size=self.world_size,
            shuffle_buffer_size=data_args.shuffle_buffer_size,
            resume_state=self.stream_state,
            max_bad_fraction=data_args.max_bad_fraction,
            pin_memory=self.accelerator.device.type == "cuda",
            # Decode large JPEGs at reduced scale, but never below what the smallest crop needs.
            decode_min_pixels=self.crop_config.decode_min_pixels,
        )

    def _start_monitors(self) -> None:
        """Trackers, the k-NN monitor, the collapse monitor and the progress bar."""
        accelerator, args, data_args = self.accelerator, self.args, self.data_args
        if args.report_to != "none":
            # Trackers such as TensorBoard take only scalars and strings as hyper-parameters.
            hyperparameters = masked_arguments(self.model_args, data_args, args)
            hyperparameters = {
                k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hyperparameters.items()
            }
            accelerator.init_trackers("dino_hf", config=hyperparameters)
        self.knn_monitor = None
        if accelerator.is_main_process and (data_args.knn_every_steps or data_args.knn_at_start_and_end):
            self.knn_monitor = build_knn_monitor(
                data_args, self.dino.config.image_size, self.crop_config, accelerator.device
            )
        self.collapse = CollapseMonitor(out_dim=self.dino.config.out_dim)
        self.progress = tqdm(
            total=None if self.max_steps == _UNPLANNED else self.max_steps,
            initial=self.global_step,
            disable=not (accelerator.is_main_process and args.progress_bar),
            desc="pretraining",
            unit="step",
        )
        logger.info(
            "Pretraining %s (%.1fM parameters per network) on %s: %d processes x %d images, %d steps/epoch, %d steps.",
            self.model_args.arch,
            sum(p.numel() for p in self.dino.student.parameters()) / 1e6,
            self.source.name,
            self.world_size,
            args.per_device_train_batch_size,
            self.steps_per_epoch,
            self.max_steps,
        )

    def train_step_and_log(self, batch) -> None:
        """One micro-batch: crops on the device, the training step; after an optimizer step, the metrics, the log,
        the k-NN evaluation and the checkpoint when they are due."""
        values = self.schedules(self._schedule_position())
        self.data_stats.add(batch.stats)
        batch = batch.to(self.accelerator.device, non_blocking=True)
        crops = self.augment(batch.images, batch.sizes, generator=self.generator)
        step = self.train_step(crops.global_crops, crops.local_crops, values)
        self.last_stream_state = batch.stream_state
        self.window_images += batch.images.shape[0] * self.world_size
        if not step.optimizer_step:
            return  # a micro-batch of gradient accumulation
        self.global_step += 1
        self.images_seen += self.total_batch
        self._follow_budget()
        output = step.output
        self.metrics.add(
            non_finite=step.non_finite,
            loss=output.loss,
            teacher_entropy=output.teacher_entropy,
            kl_divergence=output.kl_divergence,
            teacher_mean_entropy=output.teacher_mean_entropy,
            grad_norm=step.grad_norm,
            koleo_loss=output.koleo_loss,
        )
        self.progress.update(1)
        if self.step_callback is not None:
            self.step_callback(self.global_step, batch, output, self.dino)
        step_number, last = self.global_step, self.global_step >= self.max_steps
        if step_number % self.args.logging_steps == 0 or step_number == self.max_steps:
            self.log(values)
        if self.data_args.knn_every_steps and step_number % self.data_args.knn_every_steps == 0 and not last:
            self.run_knn()
        if step_number % self.args.checkpointing_steps == 0 and not last:
            self.save_checkpoint()

    def log(self, values: ScheduleValues) -> None:
        """Average the metrics since the last log (the only host sync of the loop), record and report them."""
        means, non_finite = self.metrics.pop()
        if non_finite:
            raise non_finite_error(self.global_step - self.args.logging_steps, self.global_step, self.output_dir)
        elapsed = time.perf_counter() - self.window_start
        record = {
            "step": self.global_step,
            "epoch": round(values.epoch, 4),
            **{k: round(v, 6) for k, v in means.items()},
            "lr": values.lr,
            "weight_decay": values.weight_decay,
            "momentum": values.momentum,
            "teacher_temp": values.teacher_temp,
            "images_per_second": round(self.window_images / max(elapsed, 1e-9), 2),
        }
        self.history.append(record)
        self.accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=self.global_step)
        if self.accelerator.is_main_process:
            self.progress.set_postfix(
                loss=f"{means['loss']:.3f}",
                H=f"{means['teacher_entropy']:.2f}",
                img_s=f"{record['images_per_second']:.0f}",
            )
            logger.info(_format_record(record))
            self.collapse.check(means["teacher_entropy"], means["teacher_mean_entropy"], self.global_step)
            self.data_stats.report()
        self.window_start, self.window_images = time.perf_counter(), 0

    def run_knn(self) -> None:
        """k-NN top-1 of the teacher on the main process; the others wait at the barrier."""
        if self.knn_monitor is not None:
            accuracy = self.knn_monitor(self.dino.teacher.backbone)
            record = {"step": self.global_step, "knn_top1": accuracy}
            if self.global_step == 0:  # the floor the learned features should clear, next to the random network's
                record["pixel_knn_top1"] = self.knn_monitor.pixel_baseline()
            self.history.append(record)
            self.accelerator.log({"eval/knn_top1": accuracy}, step=self.global_step)
            logger.info("step %d: k-NN top-1 of the teacher %.2f%%", self.global_step, 100 * accuracy)
        self.accelerator.wait_for_everyone()

    def save_checkpoint(self) -> None:
        """Checkpoint the run (checkpointing.py); refused after a non-finite step, before anything is written."""
        step = self.global_step
        if self.metrics.saw_non_finite():  # a skipped step since the last log
            raise non_finite_error(step - step % self.args.logging_steps, step, self.output_dir)
        trainer_state = {
            "history": self.history,
            "args": masked_arguments(self.args),
            "model_config": self.dino.config.to_dict(),
            "multicrop_config": asdict(self.crop_config),
            "base_model": self.start.base_model,
            "images_seen": self.images_seen,
            "total_batch": self.total_batch,
            "time_budget": self.plan.to_dict() if self.plan is not None else None,
        }
        path = ckpt.save_training_checkpoint(
            self.accelerator,
            self.dino,
            self.optimizer,
            {"augment": self.generator},
            self.output_dir,
            step,
            self.last_stream_state,
            trainer_state,
            self.args.save_total_limit,
        )
        if path is not None:
            logger.info("Saved %s", path)

    # ------------------------------------------------------------------------------------------------ time budget
    def _schedule_position(self) -> float:
        """The step the schedules are evaluated at: images seen / total batch (= global_step unless resumed with
        another batch), held at 0 while a time budget measures, then counted from its plan."""
        position = self.images_seen / self.total_batch
        if self.args.time_budget_minutes is None:
            return position
        return schedule_position(position, self.plan, measuring=self.plan is None)

    def _follow_budget(self) -> None:
        """At the budget's decision steps every process measures and the main process's plan is applied by all."""
        if self.budget is None or not self.budget.is_decision_step(self.global_step):
            return
        total = self.budget.observe(self.global_step, accept=False) or 0
        if self.world_size > 1:
            total = broadcast_count(self.accelerator, total)
        self.budget.accept(self.global_step, total or None)
        if total:
            self._apply_plan(self.budget.plan)

    def _apply_plan(self, plan: BudgetPlan) -> None:
        self.plan, self.max_steps = plan, plan.total_steps
        self.schedules = replace(self.schedules, steps_per_epoch=plan.schedule_steps / self.schedules.epochs)
        if hasattr(self, "progress"):
            self.progress.total = plan.total_steps
            self.progress.refresh()
        logger.info(
            "Time budget %.3g min: %.3f s per step, %d steps planned (the schedules span steps %d-%d), %.0f s kept "
            "for the end of the run.",
            plan.minutes,
            plan.seconds_per_step,
            plan.total_steps,
            plan.schedule_offset,
            plan.total_steps,
            plan.finish_seconds,
        )

    def _finish_estimate(self, knn_seconds: float) -> float:
        """Seconds the end of the run takes: the last k-NN evaluation (as long as the first, which also decoded the
        images: an overestimate), the checkpoint (weights and AdamW state, ~16 bytes a parameter) and the export,
        at a conservative 50 MB/s, plus 1 s for the card and its pictures (measured: 0.1 s on a tiny model)."""
        knn = knn_seconds if (self.data_args.knn_every_steps or self.data_args.knn_at_start_and_end) else 0.0
        parameters = sum(p.numel() for p in self.dino.parameters())
        return knn + 1.0 + parameters * 16 / 50e6

    # ------------------------------------------------------------------------------------------------ 4. finish
    def finish(self) -> PretrainingResult:
        """The last checkpoint and k-NN evaluation, then export (and upload) the teacher on the main process."""
        self.save_checkpoint()
        if self.data_args.knn_every_steps or self.data_args.knn_at_start_and_end:
            self.run_knn()
        result = PretrainingResult(
            output_dir=self.output_dir,
            global_step=self.global_step,
            history=self.history,
            final_metrics=final_metrics(self.history),
            data_stats=self.data_stats.total.to_dict(),
            model=self.dino,
        )
        summary = training_summary(
            self.model_args,
            self.data_args,
            self.args,
            result,
            self.world_size,
            self.hub_model_id,
            base_model=self.start.base_model,
            recipe=self.recipe,
        )
        # Export and upload on the main process; a failure there raises on every process instead of hanging them.
        result.export_dir = run_on_main_process(
            self.accelerator, lambda: self.export_and_upload(summary), "Exporting (and uploading) the model"
        )
        # Every process: final barrier, trackers, the DDP-wrapped model released, process group destroyed.
        finish_run(self.accelerator, release=self.release_wrapped_model)
        return result

    def release_wrapped_model(self) -> None:
        """Drop the references to the DDP-wrapped model (`self.dino`, the unwrapped one, stays for the result)."""
        self.model = self.train_step = self.optimizer = None

    def export_and_upload(self, summary: dict[str, Any]) -> Path:
        """Training curves and the exported teacher (card with pictures), uploaded with `--push_to_hub`."""
        export_dir = export_run(
            self.dino,
            self.output_dir,
            history=self.history,
            summary=summary,
            crop_config=self.crop_config,
            export_vit_model=self.args.export_vit_model,
            attention_image=validation_image(self.data_args) if self.dino.config.backbone == "vit" else None,
        )
        if self.hub_model_id:
            upload_to_hub(export_dir, self.hub_model_id, token=self.args.hub_token)
        return export_dir


def pretrain(
    model_args: DinoModelArguments,
    data_args: DinoDataArguments,
    training_args: DinoTrainingArguments,
    step_callback: StepCallback | None = None,
    started_at: float | None = None,
    recipe: list[dict[str, Any]] | None = None,
) -> PretrainingResult:
    """Pretrain DINO; returns where the checkpoints and the exported teacher backbone are, and the metrics.

    `step_callback`, `started_at`, `recipe`: see `DinoPretrainer`.
    """
    trainer = DinoPretrainer(model_args, data_args, training_args, step_callback, started_at, recipe)
    try:
        trainer.setup()
        trainer.resume()
        trainer.train()
        return trainer.finish()
    except BaseException as error:  # with many processes: name the failing process, bound this one's exit
        report_failure(getattr(trainer, "accelerator", None), error)
        raise


# max_steps of a budgeted run before its plan: larger than any run
_UNPLANNED = 2**62


def process_start_time() -> float:
    """When this process started (`time.time()` seconds): a time budget counts the imports and data preparation."""
    import psutil

    return psutil.Process().create_time()


def _format_record(record: dict) -> str:
    parts = [f"step {record['step']}"]
    for key in (
        "epoch",
        "loss",
        "teacher_entropy",
        "kl_divergence",
        "teacher_mean_entropy",
        "koleo_loss",
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
