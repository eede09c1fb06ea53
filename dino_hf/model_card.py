"""Model cards: the `README.md` of every model folder dino_hf writes or publishes, built by one function.

- [`model_card`]: the metadata (license, library, pipeline tag, datasets, base model, a model-index of measured
  accuracies, tags) and a markdown body, as a `huggingface_hub.ModelCard`. [`metrics_table`] and
  [`settings_details`] (every setting of the run, secrets masked) are the sections every card shares.
- [`pretraining_card`]: a pretrained teacher backbone (`export_pretrained`, `dino-hf-export`).
- [`finetuning_card`]: a fine-tuned classifier (`dino-hf-finetune`).
- [`segmentation_card`]: a linear segmentation head on frozen DINO features (`dino-hf-semantic-segmentation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_dino import DinoConfig
from .publishing import mask_secrets


def hub_id(name: str | None) -> str | None:
    """`name` when it can be a Hub repository id (not a local path or URL, not the embedded dataset), else None.

    >>> hub_id("timm/imagenet-1k-wds"), hub_id("embedded"), hub_id("https://dl.fbaipublicfiles.com/dino/x.pth")
    ('timm/imagenet-1k-wds', None, None)
    """
    if not name or name == "embedded" or "://" in name or Path(name).exists() or name.startswith((".", "/", "~")):
        return None
    return name


def model_card(
    *,
    body: str,
    pipeline_tag: str,
    model_name: str,
    tags: Sequence[str],
    dataset: str | None = None,
    base_model: str | None = None,
    eval_results: list[EvalResult] | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """A model card: the metadata, then `body` (markdown).

    `dataset` and `base_model` enter the metadata only when they name Hub repositories ([`hub_id`]); `eval_results`
    become the card's model-index.
    """
    dataset = hub_id(dataset)
    data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        datasets=[dataset] if dataset else None,
        base_model=hub_id(base_model),
        model_name=model_name,
        eval_results=eval_results,
        tags=list(tags),
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def metrics_table(metrics: dict[str, Any]) -> str:
    """A `| metric | value |` table (floats to 4 significant digits)."""
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    return f"| metric | value |\n|---|---|\n{rows or '| (none) | |'}"


def settings_details(settings: dict[str, Any], summary: str = "Hyper-parameters (every flag of the run)") -> str:
    """A folded `| flag | value |` table of a run's settings, every `*_token` masked (again: callers mask too)."""
    rows = "\n".join(f"| {k} | `{v}` |" for k, v in sorted(mask_secrets(settings).items()))
    return f"""<details>
<summary>{summary}</summary>

| flag | value |
|---|---|
{rows or "| (not recorded) | |"}

</details>"""


def pretraining_card(
    config: DinoConfig, summary: dict[str, Any], pictures: dict[str, str] | None = None, license: str = "apache-2.0"
) -> ModelCard:
    """The card of a pretrained teacher backbone: metadata (pipeline tag `image-feature-extraction`, datasets, base
    model, a model-index with the k-NN top-1 when the run measured it), architecture, pictures, training set-up,
    final metrics, hyper-parameters, usage.

    `summary` is what `dino_hf.training.run_summary.training_summary` returns (its `args` already have their secrets
    masked; they are masked again here); `pictures` maps captions to file names next to the card.
    """
    repo = summary.get("hub_model_id") or "path/to/this/folder"
    knn = summary.get("knn") or {}
    knn_top1 = summary.get("final_metrics", {}).get("knn_top1")
    eval_results = None
    if knn_top1 is not None:
        knn_dataset = knn.get("dataset") or summary.get("dataset_name", "unknown")
        eval_results = [
            EvalResult(
                task_type="image-classification",
                task_name=f"k-NN classification (k={knn.get('k', '?')}, frozen features)",
                dataset_type=hub_id(knn_dataset) or knn_dataset,
                dataset_name=knn_dataset,
                dataset_split=knn.get("split"),
                metric_type="accuracy",
                metric_name="k-NN top-1",
                metric_value=round(100 * float(knn_top1), 2),
            )
        ]
    return model_card(
        body=_pretraining_body(config, summary, pictures or {}, repo),
        pipeline_tag="image-feature-extraction",
        model_name=repo.split("/")[-1] if summary.get("hub_model_id") else f"dino-{summary.get('arch', 'vit')}",
        tags=["dino", "self-supervised-learning", "vision-transformer", "dino_hf"],
        dataset=summary.get("dataset_name"),
        base_model=summary.get("base_model"),
        eval_results=eval_results,
        license=license,
    )


def _pretraining_body(config: DinoConfig, summary: dict[str, Any], pictures: dict[str, str], repo: str) -> str:
    figures = "\n\n".join(f"{caption}:\n\n![{caption}]({file})" for caption, file in pictures.items())
    base = f"| started from | {summary['base_model']} |\n" if summary.get("base_model") else ""
    return f"""
{_architecture_section(config, summary.get("arch", "custom"))}| DINO head prototypes (training only) | {config.out_dim} |

{figures}

## Training

| | |
|---|---|
| dataset | {summary.get("dataset_name", "unknown")} |
{base}| steps | {summary.get("global_step", "unknown")} |
| processes x batch per process | {summary.get("world_size", "?")} x {summary.get("per_device_train_batch_size", "?")} |
| schedule length (epochs) | {summary.get("epochs", "?")} |
| crops | {summary.get("crops", "?")} |

Final metrics:

{metrics_table(summary.get("final_metrics", {}))}
{_recipe_section(summary.get("recipe"))}

{settings_details(summary.get("args") or {})}

{_usage_section(config, repo)}"""


def _usage_section(config: DinoConfig, repo: str) -> str:
    """How to get the DINO feature: a ViT's `pooler_output` is it, `(1, D)`; a ResNet's is `(1, C, 1, 1)`, flattened."""
    if config.backbone == "resnet":
        return f"""## Usage

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

processor = AutoImageProcessor.from_pretrained("{repo}")
model = AutoModel.from_pretrained("{repo}")  # transformers' ResNetModel
inputs = processor(images=Image.open("image.jpg"), return_tensors="pt")
with torch.no_grad():
    feature = model(**inputs).pooler_output.flatten(1)  # the DINO feature, (1, {config.feature_size})
```

As a pipeline, `pipeline("image-feature-extraction", model="{repo}")` with `pool=True` returns the
`(1, {config.feature_size}, 1, 1)` pooled map; with dino_hf,
`pipeline("image-feature-extraction", model="{repo}", pipeline_class=dino_hf.evaluation.DinoFeatureExtractionPipeline)`
returns the flat `(1, {config.feature_size})` DINO feature.
"""
    return f"""## Usage

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

processor = AutoImageProcessor.from_pretrained("{repo}")
model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)  # or `import dino_hf` first
inputs = processor(images=Image.open("image.jpg"), return_tensors="pt")
with torch.no_grad():
    feature = model(**inputs).pooler_output  # the DINO feature, (1, {config.hidden_size})
```

Or as a pipeline: `pipeline("image-feature-extraction", model="{repo}", trust_remote_code=True)`, `pool=True` for the
DINO feature.
"""


def _recipe_section(recipe: list[dict[str, Any]] | None) -> str:
    """The `--recipe auto` choices and their reasons, when the run used it."""
    if not recipe:
        return ""
    rows = "\n".join(f"| {c['flag']} | `{c['value']}` | {c['reason']} |" for c in recipe)
    return f"""
Settings chosen by `--recipe auto` from the data and the machine:

| flag | value | why |
|---|---|---|
{rows}
"""


def _architecture_section(config: DinoConfig, arch: str) -> str:
    """Title, description and the backbone rows of the architecture table, for a ViT or a ResNet."""
    if config.backbone == "resnet":
        return f"""# DINO {arch} (teacher backbone)

A ResNet (transformers' `ResNetModel`) pretrained with DINO (self-distillation with no labels, Caron et al. 2021)
using dino_hf. The feature is the globally average-pooled last stage
(`pooler_output.flatten(1)`, {config.feature_size} channels).

## Architecture

| | |
|---|---|
| stem / stage widths / depths | {config.resnet_embedding_size} / {config.resnet_hidden_sizes} / {config.resnet_depths} |
| block | {config.resnet_layer_type} (stride on the 3x3 convolution, as torchvision) |
"""
    return f"""# DINO {arch}/{config.patch_size} (teacher backbone)

A Vision Transformer pretrained with DINO (self-distillation with no labels, Caron et al. 2021) using
dino_hf. The feature is the final-LayerNorm [CLS] token (`pooler_output`).

## Architecture

| | |
|---|---|
| width / depth / heads | {config.hidden_size} / {config.num_hidden_layers} / {config.num_attention_heads} |
| patch size | {config.patch_size} |
| image size (position embeddings) | {config.image_size} (other sizes divisible by the patch are interpolated) |
"""


def finetuning_card(
    config: DinoConfig,
    settings: dict[str, Any],
    metrics: dict[str, Any],
    repo_id: str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """The card of a fine-tuned classifier: metadata (pipeline tag `image-classification`, dataset, base model, a
    model-index with the evaluation top-1), the head, the recipe, the evaluation, every setting, usage.

    Args:
        config: the classifier's configuration.
        settings: the fine-tuning arguments as a dict (`FinetuneArguments`; secrets are masked here).
        metrics: the final evaluation (`eval_top1` in percent, ...).
        repo_id: the Hub repository the card is published to, if any.
    """
    s = settings
    repo = repo_id or "path/to/this/folder"
    top1 = metrics.get("eval_top1")
    eval_results = None
    if top1 is not None:
        eval_results = [
            EvalResult(
                task_type="image-classification",
                dataset_type=hub_id(s["dataset_name"]) or s["dataset_name"],
                dataset_name=s["dataset_name"],
                dataset_split=s["eval_split"],
                metric_type="accuracy",
                metric_name="top-1",
                metric_value=round(float(top1), 2),
            )
        ]
    features = "and the averaged patch tokens " if config.avgpool_patchtokens else ""
    body = f"""
# DINO ViT fine-tuned on {s["dataset_name"]}

`{s["model_name_or_path"]}` (a DINO backbone, Caron et al. 2021) fine-tuned end to end with
dino_hf to classify {config.num_labels} classes.
The head is a linear layer on {config.n_last_blocks} block(s) of [CLS] tokens
{features}({config.linear_feature_dim} features).

## Recipe (DeiT's, as the DINO paper's fine-tuning)

| | |
|---|---|
| epochs / max steps | {s["num_train_epochs"]} / {s["max_steps"]} |
| batch per device x accumulation | {s["per_device_train_batch_size"]} x {s["gradient_accumulation_steps"]} |
| AdamW lr (per 512 images) / weight decay | {s["base_learning_rate"]} / {s["weight_decay"]} |
| warm-up epochs, schedule | {s["warmup_epochs"]}, cosine |
| label smoothing / layer decay / drop path | {s["label_smoothing"]} / {s["layer_decay"]} / {s["drop_path_rate"]} |

## Evaluation on {s["eval_split"]}

{metrics_table(metrics)}

{settings_details(settings, "Settings (every flag of the run)")}

## Usage

```python
import dino_hf  # registers the DINO model classes
from transformers import pipeline

classify = pipeline("image-classification", model="{repo}")
classify("image.jpg")
```
"""
    return model_card(
        body=body,
        pipeline_tag="image-classification",
        model_name=repo.split("/")[-1] if repo_id else "dino-finetuned",
        tags=["dino", "image-classification", "dino_hf"],
        dataset=s["dataset_name"],
        base_model=s["model_name_or_path"],
        eval_results=eval_results,
        license=license,
    )


def segmentation_card(
    settings: dict[str, Any],
    dataset_name: str,
    pictures: dict[str, str] | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """The card of a frozen-feature segmenter: metadata (pipeline tag `image-segmentation`, dataset, base model, a
    model-index with the validation mIoU), what it is, its figures (and the random network's when measured), the
    per-class IoU, pictures, usage.

    `settings` is the segmenter's `segmentation_config.json` (`dino_hf.evaluation.segmentation.segmenter_settings`:
    classes, input size, the backbone it came from, `figures`, optionally `random_init_figures`; no credentials).
    """
    repo = repo_id or "path/to/this/folder"
    figures = settings["figures"]
    names = list(settings["id2label"].values())
    rows = [("pretrained backbone", figures)]
    if settings.get("random_init_figures"):
        rows.append(("same head, randomly initialised backbone", settings["random_init_figures"]))
    table = "\n".join(
        f"| {label} | {100 * f['mean_iou']:.1f} | {100 * f['overall_accuracy']:.1f} |" for label, f in rows
    )
    per_class = "\n".join(f"| {name} | {100 * iou:.1f} |" for name, iou in zip(names, figures["per_category_iou"]))
    images = "\n\n".join(f"{caption}:\n\n![{caption}]({file})" for caption, file in (pictures or {}).items())
    size = settings["image_size"]
    body = f"""
# Linear segmentation head on frozen DINO features

A BatchNorm + 1x1 convolution trained on the frozen patch features of `{settings["backbone"]}` (the maps of
{", ".join(settings.get("out_features", []))}, final LayerNorm applied), with dino_hf's
`dino-hf-semantic-segmentation`. Images are resized to {size} x {size}; {len(names)} classes.

## Results on {dataset_name} (validation split, at the input size)

| backbone | mIoU | pixel accuracy |
|---|---|---|
{table}

| class | IoU |
|---|---|
{per_class}

{images}

## Usage

```python
from PIL import Image
from dino_hf.evaluation.segmentation import FrozenFeatureSegmenter

segmenter = FrozenFeatureSegmenter.from_pretrained("{repo}")
class_map = segmenter.segment([Image.open("image.png")])[0]  # ({size}, {size}) class indices
```

The folder is also a `DinoBackbone` folder (`AutoBackbone.from_pretrained` after `import dino_hf`).
"""
    eval_results = [
        EvalResult(
            task_type="image-segmentation",
            task_name="semantic segmentation (linear head, frozen features)",
            dataset_type=hub_id(dataset_name) or dataset_name,
            dataset_name=dataset_name,
            metric_type="mean_iou",
            metric_name="mIoU",
            metric_value=round(100 * float(figures["mean_iou"]), 2),
        )
    ]
    return model_card(
        body=body,
        pipeline_tag="image-segmentation",
        model_name=repo.split("/")[-1] if repo_id else "dino-frozen-feature-segmentation",
        tags=["dino", "semantic-segmentation", "dino_hf"],
        dataset=dataset_name,
        base_model=settings["backbone"],
        eval_results=eval_results,
        license=license,
    )


__all__ = [
    "finetuning_card",
    "hub_id",
    "metrics_table",
    "model_card",
    "pretraining_card",
    "segmentation_card",
    "settings_details",
]
