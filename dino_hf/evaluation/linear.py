"""Linear evaluation: a linear classifier trained on the frozen backbone's features (the reference `eval_linear.py`).

Features (the paper, Sec. 4.1 / Appendix): ViT-S concatenates the [CLS] tokens of the last 4 blocks (each through the
final LayerNorm); ViT-B takes the last block's [CLS] token with the average of its patch tokens, interleaved as in the
reference (see `DinoViTModel.get_linear_features`). The classifier is
one `nn.Linear` (no BatchNorm), weights `N(0, 0.01)`, bias 0, trained with SGD (momentum 0.9, no weight decay,
lr `0.001 * global_batch / 256`) and a cosine schedule to 0 over 100 epochs; training images get a random resized
crop and a horizontal flip, evaluation images a resize to 256 and a center crop of 224 (the data side's job: the loop
here takes any iterable of `(pixel_values, labels)` batches).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from transformers import ResNetModel

from ..configuration_dino import DinoConfig
from ..modeling_dino import DinoViTModel, backbone_features
from .metrics import top_k_accuracies


Batches = Iterable[Any] | Callable[[int], Iterable[Any]]


@dataclass
class LinearProbeConfig:
    """The reference linear-evaluation recipe (`eval_linear.py` defaults).

    Args:
        epochs: training epochs (100).
        base_lr: learning rate for a global batch of 256 (0.001); the linear scaling rule gives
            `base_lr * global_batch_size / 256` (the reference ran 8 GPUs x 128 images: lr 0.004).
        momentum: SGD momentum (0.9).
        weight_decay: SGD weight decay (0: the reference applies none).
        n_last_blocks: blocks whose [CLS] tokens are concatenated (4 for ViT-S, 1 for ViT-B).
        avgpool_patchtokens: also concatenate the average of the last block's patch tokens (False for ViT-S, True
            for ViT-B).
        eval_every: evaluate every this many epochs (and after the last one) when evaluation batches are given.

    Example:

    ```python
    >>> from dino_hf import DinoConfig
    >>> from dino_hf.evaluation import LinearProbeConfig
    >>> recipe = LinearProbeConfig.for_backbone(DinoConfig.from_preset("vit_base"))
    >>> recipe.n_last_blocks, recipe.avgpool_patchtokens, recipe.learning_rate(1024), recipe.feature_dim(768)
    (1, True, 0.004, 1536)
    ```
    """

    epochs: int = 100
    base_lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    n_last_blocks: int = 4
    avgpool_patchtokens: bool = False
    eval_every: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.n_last_blocks < 1 or self.eval_every < 1:
            raise ValueError("epochs, n_last_blocks and eval_every must be positive.")

    @classmethod
    def for_backbone(cls, config: DinoConfig, **overrides: Any) -> LinearProbeConfig:
        """The paper's feature choice for a backbone, as its config states it (`DinoConfig.n_last_blocks`,
        `avgpool_patchtokens`, defaulting by width: ViT-B and wider [CLS] + pooled patches, smaller ones 4 x [CLS],
        or all blocks' [CLS] for backbones shallower than 4 blocks); a ResNet has one feature, its pooled last stage."""
        if config.model_type == "resnet" or getattr(config, "backbone", "vit") == "resnet":
            return cls(**{"n_last_blocks": 1, "avgpool_patchtokens": False, **overrides})
        layout = {"n_last_blocks": config.n_last_blocks, "avgpool_patchtokens": config.avgpool_patchtokens}
        return cls(**{**layout, **overrides})

    def learning_rate(self, global_batch_size: int) -> float:
        """The linear scaling rule: `base_lr * global_batch_size / 256`."""
        return self.base_lr * global_batch_size / 256.0

    def feature_dim(self, hidden_size: int) -> int:
        """Width of the features [`extract_linear_features`] returns for a backbone of this width."""
        return hidden_size * (self.n_last_blocks + int(self.avgpool_patchtokens))


class LinearClassifier(nn.Module):
    """A linear layer on frozen features, initialised as in the reference (weights `N(0, 0.01)`, bias 0).

    Parameter names (`linear.weight`, `linear.bias`) are the reference's, so its released linear weights load after
    removing the DDP `module.` prefix.

    Example:

    ```python
    >>> import torch
    >>> from dino_hf.evaluation import LinearClassifier
    >>> LinearClassifier(1536, num_labels=1000)(torch.randn(2, 1536)).shape
    torch.Size([2, 1000])
    ```
    """

    def __init__(self, dim: int, num_labels: int = 1000) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.linear = nn.Linear(dim, num_labels)
        nn.init.normal_(self.linear.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`(B, dim)` (or `(B, ...)`, flattened) features -> `(B, num_labels)` logits."""
        return self.linear(features.flatten(1))


def extract_linear_features(
    model: DinoViTModel, pixel_values: torch.Tensor, n_last_blocks: int = 4, avgpool_patchtokens: bool = False
) -> torch.Tensor:
    """Linear-evaluation features in the reference's layout: [`DinoViTModel.get_linear_features`].

    The [CLS] tokens of the last `n_last_blocks` blocks (each through the final LayerNorm); with
    `avgpool_patchtokens` and one block (ViT-B), [CLS] and the averaged patch tokens interleaved as the reference
    does (`[cls_0, avg_0, cls_1, avg_1, ...]`), so its released ViT-B linear weights apply. Returns
    `(B, D * (n_last_blocks + avgpool_patchtokens))`; with `n_last_blocks=1` and no pooling this is the DINO feature,
    `model(pixel_values).pooler_output`. Gradients flow unless the caller disables them.

    A ResNet backbone (transformers' `ResNetModel`) has one linear-evaluation feature, as in the reference: its pooled
    last stage (`n_last_blocks=1`, no `avgpool_patchtokens`).
    """
    if isinstance(model, ResNetModel):
        if n_last_blocks != 1 or avgpool_patchtokens:
            raise ValueError(
                "A ResNet's feature is its pooled last stage: use n_last_blocks=1, avgpool_patchtokens=False."
            )
        return backbone_features(model, pixel_values)
    return model.get_linear_features(pixel_values, n_last_blocks, avgpool_patchtokens)


def unpack_batch(batch: Any) -> tuple[torch.Tensor, Any, Any]:
    """`(pixel_values, labels, ids)` of a batch: a tuple (labels and ids optional) or a mapping with `pixel_values` and
    optional `labels`/`label` and `ids`/`id`. Missing entries are `None`."""
    if isinstance(batch, Mapping):
        labels = batch["labels"] if "labels" in batch else batch.get("label")
        return batch["pixel_values"], labels, batch["ids"] if "ids" in batch else batch.get("id")
    batch = tuple(batch)
    return batch[0], batch[1] if len(batch) > 1 else None, batch[2] if len(batch) > 2 else None


def _pixels_and_labels(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    pixel_values, labels, _ = unpack_batch(batch)
    if labels is None:
        raise ValueError("Linear evaluation needs labelled batches: (pixel_values, labels) or {'labels': ...}.")
    return pixel_values, labels


def _epoch_iterable(batches: Batches, epoch: int, accelerator: Accelerator) -> Iterable[Any]:
    iterable = batches(epoch) if callable(batches) else batches
    if isinstance(iterable, DataLoader):
        # accelerate shards a DataLoader across processes, as the reference's DistributedSampler does.
        iterable = accelerator.prepare_data_loader(iterable)
    return iterable


def _features(
    model: DinoViTModel, pixel_values: torch.Tensor, config: LinearProbeConfig, accelerator: Accelerator
) -> torch.Tensor:
    with torch.no_grad(), accelerator.autocast():
        features = extract_linear_features(
            model, pixel_values.to(accelerator.device), config.n_last_blocks, config.avgpool_patchtokens
        )
    return features.float()


@torch.no_grad()
def evaluate_linear_probe(
    model: DinoViTModel,
    classifier: nn.Module,
    batches: Iterable[Any],
    config: LinearProbeConfig | None = None,
    *,
    accelerator: Accelerator | None = None,
) -> dict[str, float]:
    """Loss and top-1/top-5 accuracy (percent) of a linear probe over `(pixel_values, labels)` batches.

    Predictions are gathered across processes (`gather_for_metrics`) and scored with dino_hf's offline `evaluate`
    metrics; top-5 is reported when there are at least 5 labels, as in the reference.

    Returns:
        `{"loss": ..., "top1": ..., "top5": ...}`.
    """
    config = config or LinearProbeConfig()
    accelerator = accelerator or Accelerator()
    model = model.to(accelerator.device).eval()
    classifier.eval()
    num_labels = accelerator.unwrap_model(classifier).num_labels
    loss_sum = torch.zeros((), device=accelerator.device)
    rankings, references = [], []
    for batch in _epoch_iterable(batches, 0, accelerator):
        pixel_values, labels = _pixels_and_labels(batch)
        labels = labels.to(accelerator.device)
        logits = classifier(_features(model, pixel_values, config, accelerator))
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        ranked = logits.topk(min(5, num_labels), dim=1).indices
        ranked, labels = accelerator.gather_for_metrics((ranked, labels))
        rankings.append(ranked.cpu())
        references.append(labels.cpu())
    if not references:
        raise ValueError("No evaluation batches.")
    references_all = torch.cat(references)
    total_loss = accelerator.reduce(loss_sum, reduction="sum")
    metrics = top_k_accuracies(torch.cat(rankings), references_all, topk=(1, 5) if num_labels >= 5 else (1,))
    return {"loss": float(total_loss) / len(references_all), **metrics}


@dataclass
class LinearProbeResult:
    """What [`train_linear_probe`] returns.

    Args:
        classifier: the trained [`LinearClassifier`] (unwrapped from any distributed wrapper).
        history: one dict per epoch: `epoch`, `lr` (used during that epoch), `train_loss`, and the evaluation
            metrics (`loss`, `top1`, `top5`) prefixed with `eval_` on epochs that were evaluated.
        best_top1: the best evaluation top-1 accuracy (percent), `None` without evaluation batches.
    """

    classifier: LinearClassifier
    history: list[dict[str, float]] = field(default_factory=list)
    best_top1: float | None = None


def _first_and_rest(iterable: Iterable[Any]) -> tuple[Any, Iterator[Any]]:
    iterator = iter(iterable)
    try:
        first = next(iterator)
    except StopIteration:
        raise ValueError("No training batches.") from None
    return first, itertools.chain([first], iterator)


def train_linear_probe(
    model: DinoViTModel,
    train_batches: Batches,
    num_labels: int,
    config: LinearProbeConfig | None = None,
    *,
    eval_batches: Iterable[Any] | None = None,
    accelerator: Accelerator | None = None,
    global_batch_size: int | None = None,
) -> LinearProbeResult:
    """Train a [`LinearClassifier`] on the frozen backbone's features with the reference recipe, on accelerate.

    Args:
        model: the backbone; it is put in eval mode, frozen and moved to the accelerator's device.
        train_batches: `(pixel_values, labels)` batches (tuples, or mappings with `pixel_values` and `labels`), read
            once per epoch: a re-iterable (list, `DataLoader`, ...) or a callable `epoch -> iterable` (to reshuffle or
            re-seed augmentation per epoch). A `DataLoader` is sharded across processes by accelerate; other
            iterables must yield this process's own batches.
        num_labels: number of classes.
        config: the recipe; defaults to [`LinearProbeConfig.for_backbone`] of the model.
        eval_batches: optional batches for [`evaluate_linear_probe`] every `config.eval_every` epochs and at the end.
        accelerator: defaults to `Accelerator()`; mixed precision applies to the (frozen) feature extraction only.
        global_batch_size: the batch size of the linear scaling rule; defaults to the first batch's size times the
            number of processes.

    Example:

    ```python
    >>> import torch
    >>> from dino_hf import DinoConfig, DinoViTModel
    >>> from dino_hf.evaluation import LinearProbeConfig, train_linear_probe
    >>> model = DinoViTModel(DinoConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
    ...                                 num_attention_heads=4))
    >>> batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))) for _ in range(2)]
    >>> result = train_linear_probe(model, batches, num_labels=3, config=LinearProbeConfig(epochs=2, n_last_blocks=2))
    >>> [round(h["lr"], 6) for h in result.history]  # 0.001 * 8 / 256, then cosine
    [3.1e-05, 1.6e-05]
    ```
    """
    config = config or LinearProbeConfig.for_backbone(model.config)
    if config.n_last_blocks > model.config.num_hidden_layers:
        raise ValueError(
            f"n_last_blocks={config.n_last_blocks} exceeds the backbone's {model.config.num_hidden_layers} blocks."
        )
    if not callable(train_batches) and iter(train_batches) is train_batches and config.epochs > 1:
        raise ValueError(
            "train_batches is a one-shot iterator but the probe trains for several epochs: pass a list, a DataLoader "
            "or a callable epoch -> iterable."
        )
    accelerator = accelerator or Accelerator()
    model = model.to(accelerator.device).eval().requires_grad_(False)
    width = model.config.hidden_sizes[-1] if isinstance(model, ResNetModel) else model.config.hidden_size
    classifier = LinearClassifier(config.feature_dim(width), num_labels)

    first, epoch_batches = _first_and_rest(_epoch_iterable(train_batches, 0, accelerator))
    if global_batch_size is None:
        global_batch_size = unpack_batch(first)[0].shape[0] * accelerator.num_processes
    optimizer = torch.optim.SGD(
        classifier.parameters(),
        lr=config.learning_rate(global_batch_size),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    # Stepped once per epoch, as the reference does; created before `prepare`, which keeps the param groups.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=0)
    classifier, optimizer = accelerator.prepare(classifier, optimizer)

    result = LinearProbeResult(classifier=accelerator.unwrap_model(classifier))
    for epoch in range(config.epochs):
        if epoch > 0:
            epoch_batches = iter(_epoch_iterable(train_batches, epoch, accelerator))
        classifier.train()
        loss_sum = torch.zeros((), device=accelerator.device)
        count = torch.zeros((), device=accelerator.device)
        for batch in epoch_batches:
            pixel_values, labels = _pixels_and_labels(batch)
            labels = labels.to(accelerator.device)
            loss = F.cross_entropy(classifier(_features(model, pixel_values, config, accelerator)), labels)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            loss_sum += loss.detach() * labels.shape[0]
            count += labels.shape[0]
        record = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": float(accelerator.reduce(loss_sum, "sum") / accelerator.reduce(count, "sum")),
        }
        scheduler.step()
        last_epoch = epoch == config.epochs - 1
        if eval_batches is not None and (epoch % config.eval_every == 0 or last_epoch):
            metrics = evaluate_linear_probe(model, classifier, eval_batches, config, accelerator=accelerator)
            record.update({f"eval_{k}": v for k, v in metrics.items()})
            result.best_top1 = max(result.best_top1 or 0.0, metrics["top1"])
        result.history.append(record)
    return result


__all__ = [
    "LinearClassifier",
    "LinearProbeConfig",
    "LinearProbeResult",
    "evaluate_linear_probe",
    "extract_linear_features",
    "train_linear_probe",
    "unpack_batch",
]
