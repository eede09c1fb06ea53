"""Command-line arguments of DINO pretraining, as typed dataclasses (`transformers.HfArgumentParser` reads them).

Flag names follow the reference implementation (`main_dino.py`) where it has one, so its users can switch without a
dictionary, and Hugging Face conventions for the rest. Every default is the paper's ViT-S/16 recipe, read from
the one place it is written (`DinoConfig`, `MultiCropConfig`, `DinoSchedules`) with `mirrored_field`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..configuration_dino import DinoConfig
from ..data import DEFAULT_DATASET_NAME, DEFAULT_SHUFFLE_BUFFER_SIZE, MultiCropConfig
from ..publishing import masked_arguments
from .defaults import mirrored_field
from .optimization import OPTIMIZERS
from .schedules import DinoSchedules


def _help(text: str, **kwargs) -> dict:
    return {"metadata": {"help": text}, **kwargs}


@dataclass
class DinoModelArguments:
    arch: str = field(default="vit_small", **_help("Backbone preset: vit_tiny, vit_small, vit_base or resnet50."))
    patch_size: int = mirrored_field(DinoConfig, "patch_size", "Patch size in pixels (16 or 8 in the paper).")
    out_dim: int = mirrored_field(DinoConfig, "out_dim", "Number of prototypes K of the DINO head.")
    norm_last_layer: bool = mirrored_field(
        DinoConfig,
        "norm_last_layer",
        "Fix the weight-norm scale of the head's last layer at 1 (the reference's default: more stable; its "
        "README trains ViT-S/16 with false for the best results, ViT-B/16 with true).",
    )
    use_bn_in_head: bool = mirrored_field(
        DinoConfig, "use_bn_in_head", "BatchNorm in the head's MLP (False for ViTs)."
    )
    drop_path_rate: float = mirrored_field(DinoConfig, "drop_path_rate", "Stochastic depth rate of the student.")
    config_overrides: str | None = field(
        default=None,
        **_help(
            "Comma-separated DinoConfig overrides applied after the preset, e.g. "
            "'hidden_size=128,num_hidden_layers=4,num_attention_heads=4,head_hidden_dim=512'; lists in brackets, "
            "e.g. 'resnet_depths=[1,1,1,1]'."
        ),
    )
    model_name_or_path: str | None = field(
        default=None,
        **_help(
            "Start from pretrained weights instead of random ones. A backbone (a released model's name or Hub id: "
            "dino-vits16, dino_vitb8, facebook/dino-vits8, ...; or a DinoViTModel folder) starts student and teacher "
            "with a new head; a whole run (a DinoForSelfDistillation folder, or an official *_full_checkpoint.pth "
            "file or URL) also continues its heads and center. Model flags that contradict the loaded model are an "
            "error; flags left at their defaults follow it (docs/training.md)."
        ),
    )
    attn_implementation: str = field(default="sdpa", **_help("Attention kernel: sdpa (fused, default) or eager."))
    gradient_checkpointing: bool = field(
        default=False, **_help("Recompute each transformer block in the backward pass (saves activation memory).")
    )
    torch_compile: bool = field(
        default=False,
        **_help("Compile the transformer block with torch.compile (regional compilation: one block, compiled once)."),
    )


@dataclass
class DinoDataArguments:
    """Where the images come from, how they are cropped, and the optional k-NN monitor."""

    dataset_name: str = field(
        default=DEFAULT_DATASET_NAME,
        **_help(
            "A Hub dataset id (default: ImageNet-1k as webdataset shards, gated: accept its terms on the Hub and log "
            "in), a local imagefolder directory, parquet files or webdataset .tar shards (see docs/data.md), or "
            "'embedded' for the package's generated offline dataset."
        ),
    )
    embedded_options: str | None = field(
        default=None,
        **_help("JSON options of the embedded dataset generator, e.g. '{\"train_per_class\": 50}' for a quick run."),
    )
    train_split: str = field(default="train", **_help("Split to pretrain on."))
    data_files: str | None = field(default=None, **_help("Data files (glob) for parquet/webdataset/local sources."))
    image_column: str | None = field(default=None, **_help("Image column (detected if not given)."))
    label_column: str | None = field(default=None, **_help("Label column (detected if not given; only for k-NN)."))
    streaming: bool = field(
        default=True,
        **_help(
            "Stream the dataset instead of downloading it first. False: random access (a local Arrow cache), and "
            "so one global permutation per epoch; local image folders are always read that way."
        ),
    )
    shuffle_buffer_size: int = field(
        default=DEFAULT_SHUFFLE_BUFFER_SIZE, **_help("Records in the streaming shuffle buffer.")
    )
    num_workers: int = field(default=8, **_help("DataLoader worker processes that decode images, per process."))
    max_bad_fraction: float = field(
        default=0.5, **_help("Stop with an error when more than this fraction of records cannot be decoded.")
    )
    global_crops_size: int = mirrored_field(
        MultiCropConfig, "global_crops_size", "Side of the global crops (also the model's image_size)."
    )
    local_crops_size: int = mirrored_field(MultiCropConfig, "local_crops_size", "Side of the local crops.")
    global_crops_scale: list[float] = mirrored_field(
        MultiCropConfig, "global_crops_scale", "Area range of the global crops, as a fraction of the image."
    )
    local_crops_scale: list[float] = mirrored_field(
        MultiCropConfig, "local_crops_scale", "Area range of the local crops, as a fraction of the image."
    )
    local_crops_number: int = mirrored_field(
        MultiCropConfig, "local_crops_number", "Local crops per image (0 disables multi-crop)."
    )
    augmentation_overrides: str | None = field(
        default=None,
        **_help(
            "JSON object of other MultiCropConfig fields (docs/data.md), e.g. "
            '\'{"blur_sigma": [0.1, 0.5], "solarize_p_global": [0.0, 0.2]}\'; crop sizes, scales and counts have '
            "their own flags."
        ),
    )
    knn_every_steps: int = field(
        default=0, **_help("Run a k-NN evaluation of the teacher every this many steps (0: never during the run).")
    )
    knn_at_start_and_end: bool = field(
        default=False,
        **_help("k-NN of the teacher before training (the random-initialisation baseline) and after the last step."),
    )
    knn_dataset_name: str | None = field(
        default=None, **_help("Labelled dataset for the k-NN monitor (defaults to --dataset_name).")
    )
    knn_train_split: str = field(default="train", **_help("Split whose features form the k-NN memory bank."))
    knn_eval_split: str = field(default="validation", **_help("Split classified by k-NN."))
    knn_train_samples: int = field(default=10_000, **_help("Memory-bank images for the k-NN monitor."))
    knn_eval_samples: int = field(default=2_000, **_help("Query images for the k-NN monitor."))
    knn_k: int = field(default=20, **_help("Neighbours of the k-NN monitor."))

    def embedded_options_dict(self) -> dict | None:
        """`--embedded_options` parsed from JSON (None when not given)."""
        return json.loads(self.embedded_options) if self.embedded_options else None


@dataclass
class DinoTrainingArguments:
    output_dir: str = field(default="outputs/dino", **_help("Checkpoints, logs and the exported model go here."))
    seed: int = field(default=0, **_help("Random seed (each process and worker derives its own from it)."))
    per_device_train_batch_size: int = field(default=64, **_help("Images per process and micro-batch."))
    gradient_accumulation_steps: int | None = field(
        default=None,
        **_help(
            "Micro-batches per optimizer step (total batch = per_device_train_batch_size x processes x this); "
            "defaults to accelerate's setting (accelerate config / launch), else 1. The center and the teacher move "
            "once per optimizer step, and the schedules count optimizer steps."
        ),
    )
    epochs: int = field(default=100, **_help("Length of the schedules, in epochs."))
    steps_per_epoch: int | None = field(
        default=None,
        **_help("Optimizer steps per epoch; defaults to dataset size / total batch (needed for streams)."),
    )
    max_steps: int = field(default=-1, **_help("Stop after this many steps (the schedules still span --epochs)."))
    time_budget_minutes: float | None = field(
        default=None,
        **_help(
            "Fit the whole run (data preparation, training, the last evaluation and the export) in this many minutes "
            "of wall time: the run measures its speed on its first steps, plans the steps that fit, and lays every "
            "schedule over them as it would over --epochs (docs/training.md). Excludes --max_steps."
        ),
    )
    lr: float = mirrored_field(
        DinoSchedules, "lr", "Peak learning rate at a total batch of 256; scaled linearly with the total batch."
    )
    min_lr: float = mirrored_field(DinoSchedules, "min_lr", "Final learning rate of the cosine schedule.")
    warmup_epochs: float = mirrored_field(DinoSchedules, "warmup_epochs", "Linear learning-rate warm-up, in epochs.")
    weight_decay: float = mirrored_field(DinoSchedules, "weight_decay", "Initial weight decay (cosine schedule).")
    weight_decay_end: float = mirrored_field(DinoSchedules, "weight_decay_end", "Final weight decay.")
    momentum_teacher: float = mirrored_field(
        DinoSchedules, "momentum_teacher", "Initial teacher EMA momentum (cosine to 1)."
    )
    teacher_temp: float = mirrored_field(
        DinoSchedules, "teacher_temp", "Teacher temperature after the warm-up (the exported config records it)."
    )
    warmup_teacher_temp: float = mirrored_field(DinoSchedules, "warmup_teacher_temp", "Initial teacher temperature.")
    warmup_teacher_temp_epochs: int = mirrored_field(
        DinoSchedules, "warmup_teacher_temp_epochs", "Epochs of linear teacher-temperature warm-up."
    )
    optimizer: str = field(
        default="adamw",
        **_help("adamw (the ViTs), sgd (momentum 0.9, the ResNet-50 recipe) or lars (convnets, large batches)."),
    )
    clip_grad: float = field(default=3.0, **_help("Maximum gradient norm (0 disables clipping)."))
    clip_grad_mode: str = field(
        default="per_parameter",
        **_help(
            "per_parameter: clip each parameter's gradient separately (the reference's behaviour, default, so "
            "results match the paper); global: clip the joint norm of all gradients (torch's clip_grad_norm_)."
        ),
    )
    freeze_last_layer: float = mirrored_field(
        DinoSchedules, "freeze_last_layer", "Epochs during which the head's last layer is frozen."
    )
    mixed_precision: str = field(
        default="auto",
        **_help("no, fp16, bf16 (accelerate's spelling) or auto: bf16 where the GPU has it, else fp16; no on CPU."),
    )
    logging_steps: int = field(default=10, **_help("Log metrics every this many steps."))
    checkpointing_steps: int = field(
        default=1000, **_help("Save a checkpoint every this many steps (and at the end).")
    )
    save_total_limit: int = field(default=2, **_help("Keep only this many checkpoints."))
    resume_from_checkpoint: str | None = field(
        default=None, **_help("'latest' (newest checkpoint in --output_dir) or a checkpoint folder to continue from.")
    )
    report_to: str = field(
        default="none",
        **_help("Trackers for accelerate.log: none, all, or a comma list (tensorboard, wandb, trackio, ...)."),
    )
    export_vit_model: bool = field(
        default=False,
        **_help("Also export the teacher backbone as a plain transformers ViTModel in <output_dir>/vit."),
    )
    push_to_hub: bool = field(default=False, **_help("Upload the exported model, processor and card to the Hub."))
    hub_model_id: str | None = field(
        default=None,
        **_help(
            "Hub repository for --push_to_hub (user/name); default: <your user name>/<name of --output_dir>, as the "
            "Hugging Face Trainer. Created (or found) before the first step."
        ),
    )
    hub_private_repo: bool = field(default=False, **_help("Create the Hub repository as private."))
    hub_token: str | None = field(
        default=None,
        **_help("Hub token (defaults to the logged-in one); never written to any file, log, tracker or model card."),
    )
    progress_bar: bool = field(default=True, **_help("Show a tqdm progress bar."))

    def __repr__(self) -> str:
        # A printed or logged argument object must not show the token either.
        fields = ", ".join(f"{k}={v!r}" for k, v in masked_arguments(self).items())
        return f"{type(self).__name__}({fields})"

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        if self.clip_grad_mode not in ("per_parameter", "global"):
            raise ValueError(f"--clip_grad_mode must be per_parameter or global, got {self.clip_grad_mode!r}.")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ValueError(f"--mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}.")
        if self.gradient_accumulation_steps is not None and self.gradient_accumulation_steps < 1:
            raise ValueError("--gradient_accumulation_steps must be at least 1.")
        if self.per_device_train_batch_size <= 0:
            raise ValueError("--per_device_train_batch_size must be positive.")
        if self.time_budget_minutes is not None:
            if self.time_budget_minutes <= 0:
                raise ValueError(f"--time_budget_minutes must be positive, got {self.time_budget_minutes}.")
            if self.max_steps >= 0:
                raise ValueError(
                    "--time_budget_minutes and --max_steps both set the length of the run: give one of them."
                )
