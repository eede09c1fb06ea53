"""Semi-supervised video object segmentation by label propagation with DINO patch features (the reference's
`eval_video_segmentation.py`, DAVIS-2017 protocol), and the DAVIS J and F measures.

Propagation: every frame gives the last block's patch tokens (after the final LayerNorm), L2-normalised. Frame `t`'s
labels, at patch resolution, are a weighted vote of the labels of the first frame (its given mask) and of the
`n_last_frames` (7) frames before `t` (their soft propagated labels). Each target patch looks only at source patches
within `size_mask_neighborhood` (12) patches in both directions, weighs them by `exp(cosine / temperature)` (0.1),
keeps its `topk` (5) largest weights over all context frames, and normalises them to sum to 1. The soft labels are
upsampled bilinearly by the patch size, each channel is min-max normalised, the argmax is taken and resized (nearest)
to the frame's original size.

Measures, as the DAVIS toolkit: J is the region IoU of each object's mask (1 when both are empty); F is the boundary
F-measure (`db_eval_boundary`): boundaries of prediction and ground truth are matched within a tolerance of
`ceil(0.008 * image diagonal)` pixels (a disk dilation). Per object, both are averaged over the frames except the
first (given) and the last, as `davis2017-evaluation`; J&F-mean is the mean of the J and F means over all objects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..image_processing_dino import IMAGENET_MEAN, IMAGENET_STD, to_pixel_values
from ..modeling_dino import DinoViTModel
from .backbones import feature_stride, global_and_local_features
from .image_files import load_rgb


VOID = 255  # DAVIS's label for pixels no object is scored on


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map, `(256, 3)` uint8: 0 black, 1 (128, 0, 0), 2 (0, 128, 0), 3 (128, 128, 0)...

    Each colour channel takes, from the most significant bit down, every third bit of the label.
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        value, colour = label, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << bit
            value >>= 3
        palette[label] = colour
    return palette


def write_indexed_png(labels: np.ndarray, path: str | Path, palette: np.ndarray | None = None) -> Path:
    """Save an `(H, W)` integer label map as an indexed-colour PNG (the DAVIS palette by default)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.min() < 0 or labels.max() > 255:
        raise ValueError(f"Expected an (H, W) label map with values in 0..255, got {labels.shape}.")
    image = Image.fromarray(labels.astype(np.uint8), mode="L").convert("P")
    image.putpalette((davis_palette() if palette is None else palette).ravel().tolist())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def read_label_png(path: str | Path) -> np.ndarray:
    """An indexed-colour (or greyscale) PNG's label indices, `(H, W)` uint8."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path} is a {image.mode} image; label masks must be indexed-colour or greyscale PNGs.")
        return np.asarray(image).copy()


def davis_frame_size(height: int, width: int, short_side: int = 480) -> tuple[int, int]:
    """The reference's frame size: shorter side `short_side`, longer side scaled and floored to a multiple of 64."""
    if height > width:
        return int((short_side * height / width) // 64 * 64), short_side
    return short_side, int((short_side * width / height) // 64 * 64)


@torch.no_grad()
def patch_features(model: DinoViTModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """`(h * w, D)` L2-normalised spatial features of one `(1, 3, H, W)` frame ([`global_and_local_features`]): a ViT's
    last-block patch tokens (after the final LayerNorm), a ResNet's last-stage feature map."""
    _, local = global_and_local_features(model, pixel_values)
    return F.normalize(local[0].flatten(0, 1).float(), dim=-1)


def neighbourhood_mask(height: int, width: int, size: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """`(h * w, h * w)` 0/1: target patch `(i, j)` (rows) may use source patch `(k, l)` (columns) when
    `|i - k| <= size` and `|j - l| <= size` (the reference's `restrict_neighborhood`, symmetric)."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    near = ((rows[:, None] - rows[None, :]).abs() <= size) & ((cols[:, None] - cols[None, :]).abs() <= size)
    return near.float()


def propagate_labels(
    target: torch.Tensor,
    sources: Sequence[torch.Tensor],
    source_labels: Sequence[torch.Tensor],
    topk: int = 5,
    temperature: float = 0.1,
    neighbourhood: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft labels of the target frame from context frames (the reference's `label_propagation`).

    Args:
        target: `(P, D)` normalised patch features of the target frame.
        sources: context frames' `(P, D)` normalised features.
        source_labels: their `(C, P)` soft labels.
        topk: source patches each target patch keeps, over all context frames.
        temperature: the affinity is `exp(cosine / temperature)`.
        neighbourhood: `(P, P)` 0/1 mask of usable (target, source) pairs, or `None` for all.

    Returns:
        `(C, P)` labels, each target patch's a convex combination of its kept sources' labels.
    """
    with torch.autocast(target.device.type, enabled=False):  # exp(cos / 0.1) magnifies half-precision errors 10x
        return _propagate_labels(target.float(), sources, source_labels, topk, temperature, neighbourhood)


def _propagate_labels(target, sources, source_labels, topk, temperature, neighbourhood):
    sources, source_labels = [s.float() for s in sources], [lab.float() for lab in source_labels]
    affinity = torch.exp(target @ torch.stack(sources).transpose(1, 2) / temperature)  # (frames, P_target, P_source)
    if neighbourhood is not None:
        affinity = affinity * neighbourhood
    affinity = affinity.permute(1, 0, 2).reshape(target.shape[0], -1)  # (P_target, frames * P_source)
    kth = affinity.topk(topk, dim=1).values[:, -1:]
    affinity = torch.where(affinity >= kth, affinity, torch.zeros_like(affinity))
    affinity = affinity / affinity.sum(dim=1, keepdim=True)
    labels = torch.cat(list(source_labels), dim=1)  # (C, frames * P_source)
    return labels @ affinity.T


def one_hot_labels(mask: np.ndarray, grid: tuple[int, int], num_classes: int | None = None) -> torch.Tensor:
    """`(C, h * w)` one-hot labels of a full-size mask resized (nearest) to the patch grid `(h, w)`."""
    small = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((grid[1], grid[0]), Image.Resampling.NEAREST))
    classes = int(mask.max()) + 1 if num_classes is None else num_classes
    return F.one_hot(torch.from_numpy(small.astype(np.int64)).flatten(), classes).T.float()


def soft_labels_to_mask(
    labels: torch.Tensor, grid: tuple[int, int], patch_size: int, size: tuple[int, int]
) -> np.ndarray:
    """`(C, h * w)` soft labels -> `(H, W)` uint8 label map: bilinear upsampling by the patch size, per-channel
    min-max normalisation (channels whose maximum is 0 stay as they are), argmax, nearest resize to `size` (H, W)."""
    upsampled = F.interpolate(
        labels.reshape(1, -1, *grid), scale_factor=patch_size, mode="bilinear", align_corners=False
    )[0]
    low = upsampled.amin(dim=(1, 2), keepdim=True)
    high = upsampled.amax(dim=(1, 2), keepdim=True)
    scaled = (upsampled - low) / (high - low).clamp(min=1e-12)
    upsampled = torch.where(high > 0, scaled, upsampled)
    labels_map = upsampled.argmax(dim=0).to(torch.uint8).cpu().numpy()
    return np.asarray(Image.fromarray(labels_map).resize((size[1], size[0]), Image.Resampling.NEAREST))


@dataclass
class PropagationConfig:
    """The reference's defaults (`eval_video_segmentation.py`)."""

    n_last_frames: int = 7
    size_mask_neighborhood: int = 12
    topk: int = 5
    temperature: float = 0.1
    short_side: int = 480


@torch.no_grad()
def propagate_video(
    model: DinoViTModel,
    frames: Sequence[Image.Image | str | Path],
    first_mask: np.ndarray,
    config: PropagationConfig | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: str | torch.device = "cpu",
):
    """Yield the `(H, W)` uint8 label map of every frame after the first (at the frames' original size).

    Args:
        frames: the video's frames (PIL images or files), in order; the first is the annotated one.
        first_mask: `(H, W)` integer labels of the first frame (0 background, 1..C-1 objects).
    """
    config = config or PropagationConfig()
    patch = feature_stride(model)

    def features(frame):
        image = load_rgb(frame) if not isinstance(frame, Image.Image) else frame.convert("RGB")
        height, width = davis_frame_size(image.height, image.width, config.short_side)
        pixels = to_pixel_values(image.resize((width, height), Image.Resampling.BILINEAR), mean, std)
        return patch_features(model, pixels.to(device)), (height // patch, width // patch), (image.height, image.width)

    first_features, grid, _ = features(frames[0])
    first_labels = one_hot_labels(np.where(first_mask == VOID, 0, first_mask), grid).to(device)  # void: background
    neighbourhood = None
    if config.size_mask_neighborhood > 0:
        neighbourhood = neighbourhood_mask(*grid, config.size_mask_neighborhood, device)
    queue: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=config.n_last_frames)
    for frame in frames[1:]:
        target, frame_grid, size = features(frame)
        if frame_grid != grid:
            raise ValueError(f"All frames must have the same size; got a {frame_grid} patch grid after {grid}.")
        labels = propagate_labels(
            target,
            [first_features] + [f for f, _ in queue],
            [first_labels] + [lab for _, lab in queue],
            config.topk,
            config.temperature,
            neighbourhood,
        )
        queue.append((target, labels))
        yield soft_labels_to_mask(labels, grid, patch, size)


def region_similarity(prediction: np.ndarray, ground_truth: np.ndarray, void: np.ndarray | None = None) -> float:
    """J: the IoU of two boolean masks, `void` pixels left out; 1 when both are empty (DAVIS `db_eval_iou`)."""
    prediction, ground_truth = _without_void(prediction, void), _without_void(ground_truth, void)
    union = np.logical_or(prediction, ground_truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(prediction, ground_truth).sum() / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundaries of a boolean mask (DAVIS `_seg2bmap` at the mask's size): a pixel is on the boundary
    when it differs from its east, south or south-east neighbour (the last row/column compare along the edge)."""
    seg = np.asarray(mask, bool)
    east, south, south_east = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    east[:, :-1], south[:-1, :], south_east[:-1, :-1] = seg[:, 1:], seg[1:, :], seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a disk of `radius` (skimage's `disk`: offsets with `dy^2 + dx^2 <= radius^2`)."""
    kernel = torch.zeros(2 * radius + 1, 2 * radius + 1)
    offsets = torch.arange(-radius, radius + 1)
    kernel[(offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2] = 1
    image = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
    return (F.conv2d(image, kernel[None, None], padding=radius)[0, 0] > 0).numpy()


def _without_void(mask: np.ndarray, void: np.ndarray | None) -> np.ndarray:
    mask = np.asarray(mask, bool)
    return mask if void is None else mask & ~np.asarray(void, bool)


def boundary_f_measure(
    prediction: np.ndarray, ground_truth: np.ndarray, bound_th: float = 0.008, void: np.ndarray | None = None
) -> float:
    """F: the boundary F-measure of two boolean masks (DAVIS `db_eval_boundary`).

    A predicted boundary pixel is correct when a ground-truth boundary pixel lies within `bound_th` (a fraction of
    the image diagonal, rounded up, or pixels when >= 1) and vice versa for recall. Both masks lose their `void`
    pixels first. Empty boundaries: both empty -> 1; one empty -> 0.
    """
    prediction, ground_truth = _without_void(prediction, void), _without_void(ground_truth, void)
    radius = int(bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(prediction.shape)))
    predicted, annotated = boundary_map(prediction), boundary_map(ground_truth)
    num_predicted, num_annotated = predicted.sum(), annotated.sum()
    if num_predicted == 0 or num_annotated == 0:
        return 1.0 if num_predicted == num_annotated else 0.0
    precision = (predicted & _dilate(annotated, radius)).sum() / num_predicted
    recall = (annotated & _dilate(predicted, radius)).sum() / num_annotated
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def evaluate_video(predictions: Sequence[np.ndarray], annotations: Sequence[np.ndarray], skip_first_last: bool = True):
    """Per object (labels 1..max of the annotations), the mean J and F over frames, as `davis2017-evaluation`.

    Annotated pixels labelled 255 (DAVIS "void") count for no object and are left out of J and F.

    Args:
        predictions, annotations: `(H, W)` label maps of the same frames, first frame included.
        skip_first_last: leave out the first (given) and the last frame, as the DAVIS-2017 toolkit.

    Returns:
        `{object_id: {"J": mean J, "F": mean F}}`.
    """
    if len(predictions) != len(annotations):
        raise ValueError(f"{len(predictions)} predicted frames for {len(annotations)} annotated frames.")
    frames = list(zip(predictions, annotations))
    if skip_first_last and len(frames) > 2:
        frames = frames[1:-1]
    objects = range(1, max(int(np.max(np.where(a == VOID, 0, a))) for a in annotations) + 1)
    return {
        obj: {
            "J": float(np.mean([region_similarity(p == obj, a == obj, a == VOID) for p, a in frames])),
            "F": float(np.mean([boundary_f_measure(p == obj, a == obj, void=a == VOID) for p, a in frames])),
        }
        for obj in objects
    }


def summarise(per_video: dict[str, dict[int, dict[str, float]]]) -> dict[str, float]:
    """J&F-mean, J-mean and F-mean over all objects of all videos (the DAVIS-2017 global figures)."""
    objects = [scores for video in per_video.values() for scores in video.values()]
    j_mean = float(np.mean([s["J"] for s in objects]))
    f_mean = float(np.mean([s["F"] for s in objects]))
    return {"J&F-mean": (j_mean + f_mean) / 2, "J-mean": j_mean, "F-mean": f_mean}


def segment_davis(
    model: DinoViTModel,
    data_path: str | Path,
    output_dir: str | Path,
    videos: Sequence[str] | None = None,
    config: PropagationConfig | None = None,
    resolution: str = "480p",
    **kwargs,
) -> dict[str, float] | None:
    """Propagate the first mask through each DAVIS video, write `<output_dir>/<video>/<frame>.png`, and score.

    `data_path` is a DAVIS root (`JPEGImages/<resolution>/<video>/*.jpg`, `Annotations/<resolution>/<video>/*.png`,
    `ImageSets/2017/val.txt` naming the videos unless `videos` is given). Videos with every frame annotated are scored
    (returns [`summarise`]'s figures; `None` when none is); DAVIS-2017 val is, so the result is its J&F.
    """
    data_path, output_dir = Path(data_path), Path(output_dir)
    if videos is None:
        videos = (data_path / "ImageSets" / "2017" / "val.txt").read_text().split()
    scores = {}
    for video in videos:
        frames = sorted((data_path / "JPEGImages" / resolution / video).glob("*.jpg"))
        if not frames:
            raise FileNotFoundError(f"No frames (*.jpg) in {data_path / 'JPEGImages' / resolution / video}.")
        annotations = data_path / "Annotations" / resolution / video
        first = read_label_png(annotations / f"{frames[0].stem}.png")
        predictions = [first]
        write_indexed_png(first, output_dir / video / f"{frames[0].stem}.png")
        for frame, mask in zip(frames[1:], propagate_video(model, frames, first, config, **kwargs)):
            write_indexed_png(mask, output_dir / video / f"{frame.stem}.png")
            predictions.append(mask)
        truth = [annotations / f"{frame.stem}.png" for frame in frames]
        if all(path.is_file() for path in truth):
            scores[video] = evaluate_video(predictions, [read_label_png(path) for path in truth])
    return summarise(scores) if scores else None


__all__ = [
    "PropagationConfig",
    "boundary_f_measure",
    "boundary_map",
    "davis_frame_size",
    "davis_palette",
    "evaluate_video",
    "neighbourhood_mask",
    "one_hot_labels",
    "patch_features",
    "propagate_labels",
    "propagate_video",
    "read_label_png",
    "region_similarity",
    "segment_davis",
    "soft_labels_to_mask",
    "summarise",
    "write_indexed_png",
]
