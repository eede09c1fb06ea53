"""Fine-tuning a DINO backbone for image classification with the transformers `Trainer`.

The paper's third evaluation (Sec. 4.1 and Table 6): initialise with the pretrained weights and train the whole network
on the downstream task, following DeiT's recipe: AdamW, linear warm-up then cosine decay, label smoothing 0.1,
weight decay 0.05 (none on biases, norms, the [CLS] token and the position embeddings), stochastic depth 0.1,
random-resized crops and flips; layer-wise learning-rate decay (BEiT, MAE) is an option.

Why the `Trainer` and not an accelerate loop like pretraining: fine-tuning is plain supervised learning, which the
`Trainer` already does with every feature a user of `AutoModelForImageClassification` expects (epochs over a map-style
dataset, distributed sampling, mixed precision, gradient accumulation, evaluation, best-checkpoint tracking, resume,
logging integrations); DINO's loop exists for what the `Trainer` cannot express (a teacher EMA, a center, multi-crop
batches, per-step schedules of weight decay and momentum). What fine-tuning needs beyond it is two things, here:
the optimizer's parameter groups ([`finetuning_parameter_groups`], in [`DinoFinetuningTrainer`]) and the data
transforms ([`ClassificationTransform`], the package's own crops on decoded batches).

Example:

```python
>>> from dino_hf.cli.finetune import main
>>> main(["--model_name_or_path", "outputs/demo/export", "--dataset_name", "embedded",  # doctest: +SKIP
...       "--output_dir", "outputs/finetune-demo", "--num_train_epochs", "10"])
```
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import EvalPrediction, PreTrainedConfig, Trainer, TrainingArguments

from ..configuration_dino import DinoConfig
from ..data import (
    DataStats,
    DecodeOptions,
    DinoMultiCropAugmentation,
    EvalTransform,
    ImageSource,
    collate_images,
    decode_image,
    load_image_dataset,
)
from ..distributed import run_on_main_process
from ..image_processing_dino import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    dino_image_processor,
    eval_resize_size,
    processor_normalisation,
)
from ..model_card import finetuning_card
from ..modeling_dino import DinoForImageClassification
from ..publishing import create_hub_repo, masked_arguments, upload_to_hub
from ..releases import resolve_model_id
from .batches import classification_crop_config
from .features import load_backbone, save_model_with_processor
from .metrics import top_k_accuracies


logger = logging.getLogger(__name__)

# Parameters that DeiT (timm's `no_weight_decay`) exempts from weight decay besides biases and 1-D tensors.
_NO_DECAY_NAMES = ("cls_token", "position_embeddings")


# ---------------------------------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------------------------------


def parameter_layer_id(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise lr decay: 0 for the embeddings, `i + 1` for block `i`, `num_layers + 1`
    for the final LayerNorm and the classifier (BEiT's assignment)."""
    name = name.removeprefix("dino.")
    if name.startswith("embeddings."):
        return 0
    if name.startswith("encoder.layer."):
        return int(name.split(".")[2]) + 1
    return num_layers + 1


def finetuning_parameter_groups(
    model: DinoForImageClassification, learning_rate: float, weight_decay: float, layer_decay: float = 1.0
) -> list[dict[str, Any]]:
    """AdamW parameter groups: lr `learning_rate * layer_decay ** (num_layers + 1 - depth)`, weight decay on weights.

    Biases, 1-D tensors (norms), the [CLS] token and the position embeddings get no weight decay (DeiT). With
    `layer_decay < 1` earlier blocks learn more slowly than later ones (BEiT/MAE use 0.65-0.75); 1 gives every
    parameter the same lr. Frozen parameters are left out. Each group records its `lr_scale`.

    Example:

    ```python
    >>> from dino_hf import DinoConfig, DinoForImageClassification
    >>> model = DinoForImageClassification(DinoConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
    ...                                               num_attention_heads=2))
    >>> groups = finetuning_parameter_groups(model, learning_rate=1e-3, weight_decay=0.05, layer_decay=0.5)
    >>> sorted({round(g["lr"], 6) for g in groups})  # embeddings, block 0, block 1, norm + classifier
    [0.000125, 0.00025, 0.0005, 0.001]
    ```
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}.")
    num_layers = model.config.num_hidden_layers
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = name.endswith(".bias") or param.ndim <= 1 or name.split(".")[-1] in _NO_DECAY_NAMES
        depth = parameter_layer_id(name, num_layers)
        if (depth, no_decay) not in groups:
            scale = layer_decay ** (num_layers + 1 - depth)
            groups[depth, no_decay] = {
                "params": [],
                "lr": learning_rate * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        groups[depth, no_decay]["params"].append(param)
    return [groups[key] for key in sorted(groups)]


class DinoFinetuningTrainer(Trainer):
    """The `Trainer` with [`finetuning_parameter_groups`] (layer-wise lr decay, DeiT's weight-decay exemptions).

    Args:
        layer_decay: the lr decay per block from the top (1: none).
        *args, **kwargs: as for `transformers.Trainer`; the optimizer class and its other settings come from the
            `TrainingArguments` (`optim`, betas, epsilon) as usual.
    """

    def __init__(self, *args: Any, layer_decay: float = 1.0, **kwargs: Any) -> None:
        self.layer_decay = layer_decay
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = finetuning_parameter_groups(
                opt_model, self.args.learning_rate, self.args.weight_decay, self.layer_decay
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


class ClassificationTransform:
    """A batch transform for `datasets.Dataset.with_transform`: decode, then random crops (train) or the evaluation
    center crop, giving `{"pixel_values": (B, 3, S, S), "labels": (B,)}` for the `Trainer`.

    Decoding is the data pipeline's (`decode_image`: EXIF rotation, transparency, CMYK and greyscale to RGB); records
    that cannot be decoded are skipped, counted in `stats` and logged, never passed on as blank images.

    Args:
        image_column, label_column: the dataset's columns (as `load_image_dataset` found them).
        image_size: crop side.
        train: random-resized crops and flips (True) or resize to `image_size / 0.875` + center crop (False).
        mean, std: normalisation (the backbone's).
    """

    def __init__(
        self,
        image_column: str,
        label_column: str,
        image_size: int,
        *,
        train: bool,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.image_column = image_column
        self.label_column = label_column
        resize_size = eval_resize_size(image_size)
        if train:
            self.augment: DinoMultiCropAugmentation | None = DinoMultiCropAugmentation(
                classification_crop_config(image_size, mean, std)
            )
            self.decode_options = DecodeOptions(min_pixels=self.augment.config.decode_min_pixels)
        else:
            self.augment = None
            self.decode_options = DecodeOptions(min_short_side=resize_size)
        self.eval_transform = EvalTransform(image_size=image_size, resize_size=resize_size, mean=mean, std=std)
        self.stats = DataStats()

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        pixels, labels, ids = [], [], []
        for index, (value, label) in enumerate(zip(batch[self.image_column], batch[self.label_column])):
            array, reason, _ = decode_image(value, self.decode_options)
            path = value.get("path") if isinstance(value, dict) else None
            record_id = path or f"row {index} of a batch"
            if array is None:
                self.stats.record_skip(record_id, reason)
                logger.warning("Skipped an image that cannot be used (%s): %s", reason, record_id)
                continue
            pixels.append(array)
            labels.append(int(label))
            ids.append(record_id)
        if not pixels:
            return {"pixel_values": [], "labels": []}
        images = collate_images(pixels, labels, ids, self.stats)
        with torch.no_grad():
            if self.augment is not None:
                crops = self.augment(images.images, images.sizes).global_crops
            else:
                crops = self.eval_transform(images.images, images.sizes)
        return {"pixel_values": crops, "labels": images.labels}


# ---------------------------------------------------------------------------------------------------------------------
# Model and metrics
# ---------------------------------------------------------------------------------------------------------------------


def load_classifier(
    model_name_or_path: str, id2label: dict[int, str], **config_overrides: Any
) -> DinoForImageClassification:
    """A [`DinoForImageClassification`] with the backbone of a DINO checkpoint and a new head for `id2label`.

    A DINO backbone or classifier folder (or Hub repo) loads through `DinoForImageClassification.from_pretrained`
    (a classifier's head is replaced when its classes differ); anything else `load_backbone` reads (a training run's
    teacher, the Hub's `facebook/dino-*` ViTModels, the released models' names) goes through
    [`~DinoForImageClassification.from_backbone`]. Either way only the classifier head may be left newly initialised:
    any other weight the checkpoint lacks raises `MissingWeightsError`, so a fine-tune never starts from a silently
    random backbone.

    Args:
        model_name_or_path: the checkpoint.
        id2label: class names by index.
        **config_overrides: e.g. `drop_path_rate=0.1`, `n_last_blocks=1`, `avgpool_patchtokens=True`.
    """
    id2label = {int(k): str(v) for k, v in id2label.items()}
    source = resolve_model_id(model_name_or_path)
    values, _ = PreTrainedConfig.get_config_dict(source)
    architectures = values.get("architectures") or []
    native = values.get("model_type") == DinoConfig.model_type and any(
        name in architectures for name in ("DinoViTModel", "DinoForImageClassification")
    )
    if native:
        model, info = DinoForImageClassification.from_pretrained(
            source,
            id2label=id2label,
            label2id={name: index for index, name in id2label.items()},
            ignore_mismatched_sizes=True,
            output_loading_info=True,
            **config_overrides,
        )
        new_head = bool(set(info["missing_keys"]) | {item[0] for item in info["mismatched_keys"]})
    else:
        backbone = load_backbone(source)
        model, new_head = (
            DinoForImageClassification.from_backbone(backbone, id2label=id2label, **config_overrides),
            True,
        )
    if new_head:
        logger.warning(
            "Loaded every backbone weight from %s; the classifier head (%d features -> %d classes) is new, "
            "initialised N(0, 0.01) as in the reference: the only weights not from the checkpoint.",
            model_name_or_path,
            model.config.linear_feature_dim,
            model.config.num_labels,
        )
    return model


def classification_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """`compute_metrics` for the `Trainer`: top-1 (and top-5 with at least 5 classes) accuracy in percent, from
    dino_hf's offline `evaluate` metrics."""
    logits = torch.as_tensor(np.asarray(eval_prediction.predictions))
    references = torch.as_tensor(np.asarray(eval_prediction.label_ids))
    topk = (1, 5) if logits.shape[1] >= 5 else (1,)
    rankings = logits.topk(max(topk), dim=1).indices
    return top_k_accuracies(rankings, references, topk=topk)


@dataclass
class FinetuneSummary:
    """What [`~dino_hf.cli.finetune.main`] reports: the final evaluation metrics and where the model went."""

    metrics: dict[str, float] = field(default_factory=dict)
    output_dir: str = ""
    hub_repo_id: str | None = None


# ---------------------------------------------------------------------------------------------------------------------
# The recipe and the run
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FinetuneArguments:
    """Every setting of a fine-tuning run, with DeiT's recipe as defaults (the CLI's flags, `dino-hf-finetune`)."""

    model_name_or_path: str = field(metadata={"help": "A DINO backbone folder, training run or Hub id."})
    output_dir: str = field(default="outputs/finetune", metadata={"help": "The classifier and checkpoints go here."})
    dataset_name: str = field(default="embedded", metadata={"help": "As for load_image_dataset: Hub id, folder..."})
    data_files: str | None = field(default=None, metadata={"help": "Passed to datasets.load_dataset."})
    train_split: str = field(default="train")
    eval_split: str = field(default="validation")
    image_column: str | None = field(default=None, metadata={"help": "Detected when not given."})
    label_column: str | None = field(default=None, metadata={"help": "Detected when not given (a ClassLabel)."})
    embedded_options: str | None = field(default=None, metadata={"help": "JSON options of the embedded dataset."})
    max_train_samples: int | None = field(default=None, metadata={"help": "A random subset of the train split."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "A random subset of the eval split."})
    image_size: int | None = field(default=None, metadata={"help": "Crop size (default: the model's image_size)."})
    num_train_epochs: float = field(default=100.0, metadata={"help": "Epochs (BEiT/MAE fine-tune ViT-B 100)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many steps (overrides the epochs)."})
    per_device_train_batch_size: int = field(default=64)
    per_device_eval_batch_size: int = field(default=128)
    gradient_accumulation_steps: int = field(default=1)
    base_learning_rate: float = field(
        default=5e-4, metadata={"help": "lr for a total batch of 512; DeiT's rule: lr = base x total batch / 512."}
    )
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases/norms/tokens)."})
    warmup_epochs: float = field(default=5.0, metadata={"help": "Linear lr warm-up, then cosine decay to 0."})
    label_smoothing: float = field(default=0.1)
    layer_decay: float = field(default=1.0, metadata={"help": "Layer-wise lr decay (e.g. 0.65 as BEiT); 1: off."})
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth of the last block."})
    n_last_blocks: int | None = field(default=None, metadata={"help": "Head features (default: the config's)."})
    avgpool_patchtokens: bool | None = field(default=None, metadata={"help": "Head features (default: config's)."})
    mixed_precision: str = field(default="no", metadata={"choices": ["no", "bf16", "fp16"]})
    num_workers: int = field(default=4)
    seed: int = field(default=0)
    logging_steps: int = field(default=10)
    eval_strategy: str = field(default="epoch", metadata={"choices": ["no", "steps", "epoch"]})
    eval_steps: int | None = field(default=None)
    save_strategy: str = field(default="epoch", metadata={"choices": ["no", "steps", "epoch", "best"]})
    save_total_limit: int | None = field(default=2)
    report_to: str = field(default="none", metadata={"help": "tensorboard, wandb, ... or none."})
    resume_from_checkpoint: str | None = field(default=None)
    push_to_hub: bool = field(
        default=False,
        metadata={
            "help": "Upload the classifier with a model card (login checked, repository created before training)."
        },
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "Default: <user>/<name of output_dir>."})
    hub_private_repo: bool = field(default=False)
    hub_token: str | None = field(
        default=None,
        metadata={"help": "Hub token (defaults to the logged-in one); never written to any file, log or model card."},
    )

    def __repr__(self) -> str:
        # A printed or logged argument object must not show the token either.
        fields = ", ".join(f"{k}={v!r}" for k, v in masked_arguments(self).items())
        return f"{type(self).__name__}({fields})"

    def config_overrides(self) -> dict[str, Any]:
        """The model settings that change the backbone's config."""
        overrides: dict[str, Any] = {"drop_path_rate": self.drop_path_rate}
        if self.n_last_blocks is not None:
            overrides["n_last_blocks"] = self.n_last_blocks
        if self.avgpool_patchtokens is not None:
            overrides["avgpool_patchtokens"] = self.avgpool_patchtokens
        return overrides

    def training_arguments(self, num_train_examples: int) -> TrainingArguments:
        """The `TrainingArguments` of this recipe: scaled lr, warm-up in steps, cosine, label smoothing."""
        world_size = max(1, int(os.environ.get("WORLD_SIZE", "1")))
        total_batch = self.per_device_train_batch_size * world_size * self.gradient_accumulation_steps
        steps_per_epoch = max(1, math.ceil(num_train_examples / total_batch))
        return TrainingArguments(
            output_dir=self.output_dir,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            per_device_eval_batch_size=self.per_device_eval_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            learning_rate=self.base_learning_rate * total_batch / 512,
            weight_decay=self.weight_decay,
            lr_scheduler_type="cosine",
            warmup_steps=round(self.warmup_epochs * steps_per_epoch),
            label_smoothing_factor=self.label_smoothing,
            optim="adamw_torch",
            bf16=self.mixed_precision == "bf16",
            fp16=self.mixed_precision == "fp16",
            dataloader_num_workers=self.num_workers,
            remove_unused_columns=False,  # the transform reads the image column, which the model does not take
            seed=self.seed,
            logging_steps=self.logging_steps,
            eval_strategy=self.eval_strategy,
            eval_steps=self.eval_steps,
            save_strategy=self.save_strategy,
            save_total_limit=self.save_total_limit,
            report_to=self.report_to,
        )


def _open_split(args: FinetuneArguments, split: str, limit: int | None) -> ImageSource:
    options = json.loads(args.embedded_options) if args.embedded_options else None
    source = load_image_dataset(
        args.dataset_name,
        split,
        data_files=args.data_files,
        streaming=False,  # the Trainer samples a map-style dataset: a fresh global permutation every epoch
        image_column=args.image_column,
        label_column=args.label_column,
        embedded_options=options,
    )
    if source.label_column is None:
        raise ValueError(f"{args.dataset_name}/{split} has no label column; pass --label_column.")
    if limit is not None and limit < len(source.dataset):
        source.dataset = source.dataset.shuffle(seed=args.seed).select(range(limit))
        source.num_examples = limit
    return source


def finetune(args: FinetuneArguments) -> FinetuneSummary:
    """Fine-tune a DINO backbone on a labelled image dataset with the `Trainer`, save (and optionally push) the
    pipeline-ready classifier, and return the final evaluation metrics.

    Publishing is pretraining's (`dino_hf.publishing`): with `push_to_hub` the login is checked and the repository
    created before training (on the main process, its failure raised on every process), the card is
    `dino_hf.model_card.finetuning_card`, and the token is masked in everything written.
    """
    train_source = _open_split(args, args.train_split, args.max_train_samples)
    eval_source = _open_split(args, args.eval_split, args.max_eval_samples)
    if not train_source.class_names:
        raise ValueError("The label column is not a ClassLabel, so the class names are unknown.")
    id2label = dict(enumerate(train_source.class_names))
    model = load_classifier(args.model_name_or_path, id2label, **args.config_overrides())
    image_size = args.image_size or model.config.image_size
    mean, std = processor_normalisation(args.model_name_or_path)

    def transform(source: ImageSource, train: bool) -> ClassificationTransform:
        return ClassificationTransform(
            source.image_column, source.label_column, image_size, train=train, mean=mean, std=std
        )

    trainer = DinoFinetuningTrainer(
        model=model,
        args=args.training_arguments(len(train_source.dataset)),
        train_dataset=train_source.dataset.with_transform(transform(train_source, True)),
        eval_dataset=eval_source.dataset.with_transform(transform(eval_source, False)),
        compute_metrics=classification_metrics,
        layer_decay=args.layer_decay,
    )
    repo_id = None
    if args.push_to_hub:  # before training: a login or permission problem stops the run at once
        repo_id = run_on_main_process(
            trainer.accelerator,
            lambda: create_hub_repo(
                args.output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo
            ),
            "Preparing the Hub repository",
        )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    summary = FinetuneSummary(metrics=metrics, output_dir=args.output_dir)
    if trainer.is_world_process_zero():
        folder = save_classifier(trainer.model, args, image_size, mean, std, metrics, repo_id=repo_id)
        if repo_id:
            summary.hub_repo_id = upload_to_hub(
                folder,
                repo_id,
                token=args.hub_token,
                ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**"],  # the Trainer's, not the model's
                commit_message="Upload DINO classifier fine-tuned with dino_hf",
            )
    return summary


def save_classifier(
    model: DinoForImageClassification,
    args: FinetuneArguments,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    metrics: dict[str, float],
    repo_id: str | None = None,
) -> Path:
    """The classifier, its image processor and a model card in `args.output_dir` (ready for `pipeline`); `repo_id`:
    the Hub repository the card is published to, if any."""
    folder = save_model_with_processor(
        model, args.output_dir, dino_image_processor(image_size=image_size, mean=mean, std=std)
    )
    settings = masked_arguments(args)
    finetuning_card(model.config, settings, metrics, repo_id).save(folder / "README.md")
    (folder / "finetune_summary.json").write_text(json.dumps({"metrics": metrics, "arguments": settings}, indent=2))
    return folder


__all__ = [
    "ClassificationTransform",
    "DinoFinetuningTrainer",
    "FinetuneArguments",
    "FinetuneSummary",
    "classification_metrics",
    "finetune",
    "finetuning_parameter_groups",
    "load_classifier",
    "parameter_layer_id",
    "save_classifier",
]
