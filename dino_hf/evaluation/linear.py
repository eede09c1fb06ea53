"""Linear evaluation: linear classifiers trained on the frozen backbone's features (the reference `eval_linear.py`).

Features (the paper, Sec. 4.1 / Appendix): ViT-S concatenates the [CLS] tokens of the last 4 blocks (each through the
final LayerNorm); ViT-B takes the last block's [CLS] token with the average of its patch tokens, interleaved as in the
reference (see `DinoViTModel.get_linear_features`). A classifier is one `nn.Linear` (no BatchNorm), weights
`N(0, 0.01)`, bias 0, trained with SGD (momentum 0.9, lr `base_lr * global_batch / 256`) and a cosine schedule to 0
over 100 epochs; training images get a random resized
crop and a horizontal flip, evaluation images a resize to 256 and a center crop of 224 (the data side's job: the loop
here takes any iterable of `(pixel_values, labels)` batches).

The reference trains one classifier at `base_lr=0.001`, a value tuned for 100 ImageNet epochs; on other data or
shorter runs it can leave the classifier far from converged. As dinov2's linear evaluation does, the probe here trains
a grid of classifiers at once, one per (learning rate, weight decay), on the same features: one backbone forward per
batch feeds every head, and the head with the best validation top-1 is reported. A grid of one
(`base_lrs=(0.001,)`, `weight_decays=(0.0,)`) is the reference's protocol. [`train_linear_probe_on_features`] trains
the same heads on stored features (extract once with [`extract_probe_features`]), without training augmentation.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from ..configuration_dino import DinoConfig
from ..modeling_dino import DinoViTModel
from .backbones import feature_size, is_resnet
from .features import extract_linear_features, unpack_batch
from .metrics import top_k_accuracies


logger = logging.getLogger(__name__)

Batches = Iterable[Any] | Callable[[int], Iterable[Any]]

# Base learning rates (at a global batch of 256) trained side by side by default: dinov2's grid (1e-5 to 0.1 in 1-2-5
# steps) without its smallest values, extended to 1.0 for short runs; it contains the reference's 0.001.
DEFAULT_BASE_LRS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0)


def _as_floats(values: float | Sequence[float], name: str) -> tuple[float, ...]:
    values = (values,) if isinstance(values, (int, float)) else tuple(values)
    if not values or any(v < 0 for v in values):
        raise ValueError(f"{name} must be a non-empty sequence of non-negative numbers, got {values}.")
    return tuple(float(v) for v in values)


@dataclass
class LinearProbeConfig:
    """The linear-evaluation recipe: the reference's (`eval_linear.py`) with a grid of learning rates.

    Args:
        epochs: training epochs (100).
        base_lrs: learning rates for a global batch of 256, one head each (`DEFAULT_BASE_LRS`, 13 values from 1e-4
            to 1.0); the linear scaling rule gives `base_lr * global_batch_size / 256`. The reference trains one head
            at 0.001 (8 GPUs x 128 images: lr 0.004): `base_lrs=(0.001,)`.
        momentum: SGD momentum (0.9).
        weight_decays: SGD weight decays, crossed with `base_lrs` (`(0.0,)`: the reference applies none).
        n_last_blocks: blocks whose [CLS] tokens are concatenated (4 for ViT-S, 1 for ViT-B).
        avgpool_patchtokens: also concatenate the average of the last block's patch tokens (False for ViT-S, True
            for ViT-B).
        eval_every: evaluate every this many epochs (and after the last one) when evaluation batches are given.

    Example:

    ```python
    >>> from dino_hf import DinoConfig
    >>> from dino_hf.evaluation import LinearProbeConfig
    >>> recipe = LinearProbeConfig.for_backbone(DinoConfig.from_preset("vit_base"), base_lrs=(0.001, 0.01))
    >>> recipe.n_last_blocks, recipe.avgpool_patchtokens, recipe.learning_rates(1024), recipe.feature_dim(768)
    (1, True, [0.004, 0.04], 1536)
    >>> LinearProbeConfig(weight_decays=(0.0, 1e-4)).grid()[:2]  # (base_lr, weight_decay) of each head
    [(0.0001, 0.0), (0.0002, 0.0)]
    ```
    """

    epochs: int = 100
    base_lrs: tuple[float, ...] = DEFAULT_BASE_LRS
    momentum: float = 0.9
    weight_decays: tuple[float, ...] = (0.0,)
    n_last_blocks: int = 4
    avgpool_patchtokens: bool = False
    eval_every: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.n_last_blocks < 1 or self.eval_every < 1:
            raise ValueError("epochs, n_last_blocks and eval_every must be positive.")
        self.base_lrs = _as_floats(self.base_lrs, "base_lrs")
        self.weight_decays = _as_floats(self.weight_decays, "weight_decays")

    @classmethod
    def for_backbone(cls, config: DinoConfig, **overrides: Any) -> LinearProbeConfig:
        """The paper's feature choice for a backbone, as its config states it (`DinoConfig.n_last_blocks`,
        `avgpool_patchtokens`, defaulting by width: ViT-B and wider [CLS] + pooled patches, smaller ones 4 x [CLS],
        or all blocks' [CLS] for backbones shallower than 4 blocks); a ResNet has one feature, its pooled last stage."""
        if config.model_type == "resnet" or getattr(config, "backbone", "vit") == "resnet":
            return cls(**{"n_last_blocks": 1, "avgpool_patchtokens": False, **overrides})
        layout = {"n_last_blocks": config.n_last_blocks, "avgpool_patchtokens": config.avgpool_patchtokens}
        return cls(**{**layout, **overrides})

    def grid(self) -> list[tuple[float, float]]:
        """`(base_lr, weight_decay)` of each head, in head order (weight decay outer, learning rate inner)."""
        return [(lr, wd) for wd in self.weight_decays for lr in self.base_lrs]

    def learning_rates(self, global_batch_size: int) -> list[float]:
        """Each head's learning rate by the linear scaling rule: `base_lr * global_batch_size / 256`."""
        return [lr * global_batch_size / 256.0 for lr, _ in self.grid()]

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


def _image_features(
    model: DinoViTModel, batches: Iterable[Any], config: LinearProbeConfig, accelerator: Accelerator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`(features, labels)` of image batches: one backbone forward per batch, whatever the number of heads."""
    for batch in batches:
        pixel_values, labels = _pixels_and_labels(batch)
        yield _features(model, pixel_values, config, accelerator), labels.to(accelerator.device)


class LinearHeads(nn.Module):
    """Several [`LinearClassifier`]s on the same features: `(B, dim)` -> `(num_heads, B, num_labels)` logits.

    Example:

    ```python
    >>> import torch
    >>> from dino_hf.evaluation import LinearClassifier
    >>> heads = LinearHeads([LinearClassifier(8, num_labels=3) for _ in range(4)])
    >>> heads(torch.randn(2, 8)).shape
    torch.Size([4, 2, 3])
    ```
    """

    def __init__(self, classifiers: Sequence[LinearClassifier]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(classifiers)
        self.num_labels = classifiers[0].num_labels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(features) for head in self.heads])


def _per_head_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`(H, B, C)` logits, `(B,)` labels -> `(H, B)` cross-entropies (in float32)."""
    num_heads, batch = logits.shape[:2]
    losses = F.cross_entropy(logits.flatten(0, 1).float(), labels.repeat(num_heads), reduction="none")
    return losses.view(num_heads, batch)


@torch.no_grad()
def _evaluate_heads(
    heads: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], accelerator: Accelerator, gather: bool
) -> list[dict[str, float]]:
    """Loss, top-1 and top-5 (percent; top-5 with at least 5 labels, as the reference) of every head."""
    heads.eval()
    num_labels = accelerator.unwrap_model(heads).num_labels
    loss_sum, rankings, references = None, [], []
    for features, labels in batches:
        logits = heads(features)
        losses = _per_head_cross_entropy(logits, labels).sum(dim=1)
        loss_sum = losses if loss_sum is None else loss_sum + losses
        ranked = logits.topk(min(5, num_labels), dim=2).indices.transpose(0, 1)  # (B, H, k)
        if gather:
            ranked, labels = accelerator.gather_for_metrics((ranked, labels))
        rankings.append(ranked.cpu())
        references.append(labels.cpu())
    if not references:
        raise ValueError("No evaluation batches.")
    if gather:
        loss_sum = accelerator.reduce(loss_sum, reduction="sum")
    ranked, references_all = torch.cat(rankings), torch.cat(references)
    topk = (1, 5) if num_labels >= 5 else (1,)
    return [
        {"loss": loss / len(references_all), **top_k_accuracies(ranked[:, head], references_all, topk=topk)}
        for head, loss in enumerate(loss_sum.tolist())
    ]


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
    heads = LinearHeads([accelerator.unwrap_model(classifier)])
    batches = _image_features(model, _epoch_iterable(batches, 0, accelerator), config, accelerator)
    return _evaluate_heads(heads, batches, accelerator, gather=True)[0]


@dataclass
class LinearProbeResult:
    """What [`train_linear_probe`] and [`train_linear_probe_on_features`] return.

    Args:
        classifier: the best head's trained [`LinearClassifier`] (unwrapped from any distributed wrapper).
        classifiers: every head's, in the order of `LinearProbeConfig.grid()`.
        grid: `(base_lr, weight_decay)` of each head.
        history: one row per (epoch, head): `epoch`, `head`, `base_lr`, `weight_decay`, `lr` (used during that
            epoch), `train_loss`, and on evaluated epochs the evaluation metrics prefixed with `eval_` (`eval_loss`,
            `eval_top1`, `eval_top5`).
        best_head: the head with the best final evaluation top-1 (ties: the lower evaluation loss); the only head of
            a grid of one.

    The validation split both chooses the head and reports its figure, as in dinov2's linear evaluation: with many
    heads the best figure is slightly optimistic; evaluate `classifier` on a separate split for an unbiased one.
    """

    classifier: LinearClassifier | None = None
    classifiers: list[LinearClassifier] = field(default_factory=list)
    grid: list[tuple[float, float]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    best_head: int | None = None

    @property
    def heads(self) -> list[dict[str, float]]:
        """The last history row of each head: every head's final figures (a table row each)."""
        return [[row for row in self.history if row["head"] == head][-1] for head in range(len(self.grid))]

    @property
    def best(self) -> dict[str, float]:
        """The best head's final row (empty without history)."""
        return self.heads[self.best_head] if self.history else {}

    @property
    def best_top1(self) -> float | None:
        """The best head's final evaluation top-1 (percent), `None` without evaluation."""
        return self.best.get("eval_top1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready `{"best_top1", "best", "heads", "history"}`."""
        return {"best_top1": self.best_top1, "best": self.best, "heads": self.heads, "history": self.history}

    def table(self) -> str:
        """Every head's final figures (and its lr at the start of the cosine) as a Markdown table; the best head is
        marked `*`."""
        columns = [c for c in ("eval_top1", "eval_top5", "eval_loss", "train_loss") if c in self.heads[0]]
        peak = {row["head"]: row["lr"] for row in self.history if row["epoch"] == self.history[0]["epoch"]}
        lines = ["| head | base_lr | peak lr | weight_decay | " + " | ".join(columns) + " |"]
        lines.append("|" + "---|" * (4 + len(columns)))
        for row in self.heads:
            head, mark = row["head"], "*" if row["head"] == self.best_head else ""
            values = " | ".join(f"{row[c]:.4g}" for c in columns)
            lines.append(
                f"| {head}{mark} | {row['base_lr']:g} | {peak[head]:.4g} | {row['weight_decay']:g} | {values} |"
            )
        return "\n".join(lines)

    def _choose_best(self) -> None:
        def score(head: int) -> tuple[float, float]:
            row = self.heads[head]
            loss = row.get("eval_loss", float("inf"))
            return row.get("eval_top1", 0.0), -loss if loss == loss else -float("inf")  # NaN loss: diverged

        self.best_head = max(range(len(self.grid)), key=score)
        self.classifier = self.classifiers[self.best_head]


def _train_epoch(
    heads: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over `(features, labels)` batches; returns each head's summed loss `(H,)` and the image count."""
    heads.train()
    loss_sum = count = None
    for features, labels in batches:
        losses = _per_head_cross_entropy(heads(features), labels).mean(dim=1)
        optimizer.zero_grad()
        # The heads share no parameter: the sum's gradient is each head's own, as if trained alone.
        losses.sum().backward()
        optimizer.step()
        batch_loss = losses.detach() * labels.shape[0]
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        count = labels.shape[0] if count is None else count + labels.shape[0]
    if count is None:
        raise ValueError("No training batches.")
    return loss_sum, torch.tensor(float(count), device=loss_sum.device)


def _fit_heads(
    epoch_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    evaluate: Callable[[nn.Module], list[dict[str, float]]] | None,
    dim: int,
    num_labels: int,
    config: LinearProbeConfig,
    accelerator: Accelerator,
    global_batch_size: int,
    distributed: bool,
) -> LinearProbeResult:
    """Train one head per grid point on `epoch -> (features, labels)` batches; `distributed`: each process has its
    own shard (online mode; gradients are averaged) rather than all the data (cached mode)."""
    grid = config.grid()
    classifiers = [LinearClassifier(dim, num_labels) for _ in grid]
    heads = LinearHeads(classifiers).to(accelerator.device)
    lrs = config.learning_rates(global_batch_size)
    groups = [
        {"params": head.parameters(), "lr": lr, "weight_decay": wd}
        for head, lr, (_, wd) in zip(heads.heads, lrs, grid, strict=True)
    ]
    optimizer = torch.optim.SGD(groups, lr=lrs[0], momentum=config.momentum)
    # Stepped once per epoch, as the reference does; it scales each group's own lr. Created before `prepare`.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=0)
    if distributed and accelerator.num_processes > 1:
        # Plain DDP, not `accelerator.prepare`: that would run the heads under autocast and, in fp16, a GradScaler
        # whose skipped steps on one diverging head's inf gradients would stall every head. The heads stay float32.
        on_gpu = accelerator.device.type == "cuda"
        heads = nn.parallel.DistributedDataParallel(heads, device_ids=[accelerator.device] if on_gpu else None)
    result = LinearProbeResult(classifiers=classifiers, grid=grid)
    for epoch in range(config.epochs):
        used_lrs = [group["lr"] for group in optimizer.param_groups]
        loss_sum, count = _train_epoch(heads, optimizer, epoch_batches(epoch))
        if distributed:
            loss_sum, count = accelerator.reduce(loss_sum, "sum"), accelerator.reduce(count, "sum")
        scheduler.step()
        evaluated = evaluate is not None and (epoch % config.eval_every == 0 or epoch == config.epochs - 1)
        metrics = evaluate(heads) if evaluated else [{} for _ in grid]
        if evaluated and accelerator.is_main_process:
            best = max(range(len(grid)), key=lambda h: metrics[h]["top1"])
            logger.info(
                f"epoch {epoch}: best head {best} (base_lr {grid[best][0]:g}) top-1 {metrics[best]['top1']:.2f}%"
            )
        for head, ((base_lr, wd), lr, loss, scores) in enumerate(
            zip(grid, used_lrs, (loss_sum / count).tolist(), metrics, strict=True)
        ):
            row = {"epoch": epoch, "head": head, "base_lr": base_lr, "weight_decay": wd, "lr": lr}
            result.history.append({**row, "train_loss": loss, **{f"eval_{k}": v for k, v in scores.items()}})
    result._choose_best()
    return result


def _first_and_rest(iterable: Iterable[Any]) -> tuple[Any, Iterator[Any]]:
    iterator = iter(iterable)
    try:
        first = next(iterator)
    except StopIteration:
        raise ValueError("No training batches.") from None
    return first, itertools.chain([first], iterator)


def _check_grid_needs_validation(config: LinearProbeConfig, has_validation: bool) -> None:
    if len(config.grid()) > 1 and not has_validation:
        raise ValueError(
            f"The grid has {len(config.grid())} heads and nothing to choose among them: pass evaluation batches, or "
            "a single base_lr and weight decay."
        )


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
    """Train a grid of [`LinearClassifier`]s on the frozen backbone's features, on accelerate.

    Each batch goes through the backbone once and its features train every head of `config.grid()` (one per
    learning rate and weight decay), each with its own SGD parameter group and the same cosine schedule; the head
    with the best final evaluation top-1 is `result.classifier`.

    Args:
        model: the backbone; it is put in eval mode, frozen and moved to the accelerator's device.
        train_batches: `(pixel_values, labels)` batches (tuples, or mappings with `pixel_values` and `labels`), read
            once per epoch: a re-iterable (list, `DataLoader`, ...) or a callable `epoch -> iterable` (to reshuffle or
            re-seed augmentation per epoch). A `DataLoader` is sharded across processes by accelerate; other
            iterables must yield this process's own batches.
        num_labels: number of classes.
        config: the recipe; defaults to [`LinearProbeConfig.for_backbone`] of the model.
        eval_batches: batches for evaluation every `config.eval_every` epochs and at the end; required with more
            than one head (they choose the best).
        accelerator: defaults to `Accelerator()`; mixed precision applies to the (frozen) feature extraction only:
            the heads train in float32 (wrapped in DDP across processes).
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
    >>> config = LinearProbeConfig(epochs=2, base_lrs=(0.001, 0.1), n_last_blocks=2)
    >>> result = train_linear_probe(model, batches, num_labels=3, config=config, eval_batches=batches)
    >>> [round(row["lr"], 6) for row in result.history]  # epoch 0 (both heads), then epoch 1: x * 8 / 256, cosine
    [3.1e-05, 0.003125, 1.6e-05, 0.001563]
    >>> len(result.heads), result.best_head in (0, 1)
    (2, True)
    ```
    """
    config = config or LinearProbeConfig.for_backbone(model.config)
    if not is_resnet(model) and config.n_last_blocks > model.config.num_hidden_layers:
        raise ValueError(
            f"n_last_blocks={config.n_last_blocks} exceeds the backbone's {model.config.num_hidden_layers} blocks."
        )
    if not callable(train_batches) and iter(train_batches) is train_batches and config.epochs > 1:
        raise ValueError(
            "train_batches is a one-shot iterator but the probe trains for several epochs: pass a list, a DataLoader "
            "or a callable epoch -> iterable."
        )
    _check_grid_needs_validation(config, eval_batches is not None)
    accelerator = accelerator or Accelerator()
    model = model.to(accelerator.device).eval().requires_grad_(False)
    width = feature_size(model)
    first, first_epoch = _first_and_rest(_epoch_iterable(train_batches, 0, accelerator))
    if global_batch_size is None:
        global_batch_size = unpack_batch(first)[0].shape[0] * accelerator.num_processes

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images = first_epoch if epoch == 0 else _epoch_iterable(train_batches, epoch, accelerator)
        return _image_features(model, images, config, accelerator)

    def evaluate(heads: nn.Module) -> list[dict[str, float]]:
        batches = _image_features(model, _epoch_iterable(eval_batches, 0, accelerator), config, accelerator)
        return _evaluate_heads(heads, batches, accelerator, gather=True)

    dim = config.feature_dim(width)
    fit = (epoch_batches, evaluate if eval_batches is not None else None, dim, num_labels, config, accelerator)
    return _fit_heads(*fit, global_batch_size, distributed=True)


def extract_probe_features(
    model: DinoViTModel,
    batches: Iterable[Any],
    config: LinearProbeConfig,
    *,
    accelerator: Accelerator | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The linear-evaluation features of every batch (`config`'s layout, under the accelerator's autocast, float32):
    `{"features", "labels", "ids"}` as [`extract_features`] returns, ready for [`save_features`] and
    [`train_linear_probe_on_features`]. This process's batches only."""
    from .features import extract_features  # features.py imports this module

    accelerator = accelerator or Accelerator()
    model = model.to(accelerator.device).eval()
    with accelerator.autocast():
        return extract_features(
            model,
            batches,
            n_last_blocks=config.n_last_blocks,
            avgpool_patchtokens=config.avgpool_patchtokens,
            progress=progress,
        )


def feature_batches(
    features: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0
) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """`epoch -> (features, labels)` batches of stored features: a fresh permutation per epoch (seeded by `seed` and
    the epoch) or, with `shuffle=False`, the stored order; the last batch may be smaller."""

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if shuffle:
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            order = order.to(features.device)
        else:
            order = torch.arange(len(labels), device=features.device)
        for start in range(0, len(labels), batch_size):
            index = order[start : start + batch_size]
            yield features[index], labels[index]

    return epoch_batches


def _features_and_labels(stored: Mapping[str, Any], device: torch.device, name: str) -> tuple[torch.Tensor, ...]:
    features, labels = stored["features"], stored.get("labels")
    if labels is None or len(labels) != len(features):
        raise ValueError(f"{name} needs one label per feature.")
    return features.float().to(device), torch.as_tensor(labels, dtype=torch.long).to(device)


def train_linear_probe_on_features(
    train_features: Mapping[str, Any],
    num_labels: int,
    config: LinearProbeConfig | None = None,
    *,
    eval_features: Mapping[str, Any] | None = None,
    batch_size: int = 128,
    shuffle: bool = True,
    seed: int = 0,
    accelerator: Accelerator | None = None,
) -> LinearProbeResult:
    """[`train_linear_probe`]'s grid of heads on stored features: fast iteration, no training augmentation.

    The features are those of the evaluation preprocessing (each image once, center crop), so the heads see the same
    view of an image every epoch, where the online probe sees a new random-resized crop and flip; expect a gap to the
    online figure on data where augmentation matters. With `shuffle=False` and the online probe's batches, the heads
    are the online probe's (same features, same order, same updates).

    Args:
        train_features, eval_features: `{"features": (N, D), "labels": (N,)}`, as [`extract_probe_features`],
            [`extract_features`] or [`load_features`] return; all of a split's features (every process trains the
            same heads on all of them: they are cheap, nothing is sharded).
        num_labels: number of classes.
        config: the recipe (its layout fields are unused here: the features are given); defaults to
            `LinearProbeConfig()`.
        batch_size: images per step, also the batch of the linear scaling rule.
        shuffle, seed: a new seeded permutation of the training features each epoch, or the stored order.
        accelerator: only its device is used.
    """
    config = config or LinearProbeConfig()
    _check_grid_needs_validation(config, eval_features is not None)
    accelerator = accelerator or Accelerator()
    device = accelerator.device
    features, labels = _features_and_labels(train_features, device, "train_features")
    evaluate = None
    if eval_features is not None:
        eval_x, eval_y = _features_and_labels(eval_features, device, "eval_features")

        def evaluate(heads: nn.Module) -> list[dict[str, float]]:
            return _evaluate_heads(heads, feature_batches(eval_x, eval_y, 1024, shuffle=False)(0), accelerator, False)

    epoch_batches = feature_batches(features, labels, batch_size, shuffle=shuffle, seed=seed)
    fit = (epoch_batches, evaluate, features.shape[1], num_labels, config, accelerator)
    return _fit_heads(*fit, batch_size, distributed=False)


__all__ = [
    "DEFAULT_BASE_LRS",
    "LinearClassifier",
    "LinearHeads",
    "LinearProbeConfig",
    "LinearProbeResult",
    "evaluate_linear_probe",
    "extract_probe_features",
    "feature_batches",
    "train_linear_probe",
    "train_linear_probe_on_features",
]
