"""Self-attention maps of the last block: the [CLS] token's attention to the patches, per head (the paper's Fig. 1).

The masks keep, per head, the smallest set of patches that holds a given fraction (60% in the paper) of the [CLS]
token's attention to the patches. The PNG grid needs only PIL and numpy (no matplotlib): its colormap is a
piecewise-linear approximation of viridis.

Video mode ([`attention_video`], the reference's `video_generation.py`): the heads' mean map of every frame, written as
images and an animated GIF (PIL) or MP4 (optional `imageio` + `av`, which also read video files).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..image_processing_dino import IMAGENET_MEAN, IMAGENET_STD, prepare_image
from ..modeling_dino import DinoViTModel
from .backbones import require_attention


# viridis at 0, 1/8, ..., 1 (RGB, 0-255).
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [71, 44, 122],
        [59, 81, 139],
        [44, 113, 142],
        [33, 145, 140],
        [39, 173, 129],
        [92, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ],
    dtype=np.float64,
)
# One colour per head for the mask overlays (cycled beyond ten heads).
_MASK_COLOURS = np.array(
    [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
    ],
    dtype=np.float64,
)


@torch.no_grad()
def attention_maps(model: DinoViTModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """The last block's [CLS]->patch attention of every head, on the patch grid.

    Works whatever attention implementation the model runs (only the last block computes explicit weights, see
    [`DinoViTModel.get_last_selfattention`]). The values are attention probabilities: with the [CLS]->[CLS] weight
    they sum to 1 over the patches.

    Args:
        model: the backbone.
        pixel_values: `(B, 3, H, W)` normalised images, `H` and `W` multiples of the patch size.

    Returns:
        `(B, heads, H / patch, W / patch)`.

    Example:

    ```python
    >>> import torch
    >>> from dino_hf import DinoConfig, DinoViTModel
    >>> from dino_hf.evaluation import attention_maps
    >>> model = DinoViTModel(DinoConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
    ...                                 num_attention_heads=4)).eval()
    >>> attention_maps(model, torch.randn(1, 3, 32, 48)).shape
    torch.Size([1, 4, 4, 6])
    ```
    """
    require_attention(model, "Attention maps")
    patch_size = model.config.patch_size
    height, width = pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size
    attentions = model.get_last_selfattention(pixel_values)
    return attentions[:, :, 0, 1:].reshape(attentions.shape[0], attentions.shape[1], height, width)


def threshold_attention(attentions: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """Boolean masks of the smallest set of patches holding at least `mass` of each map's attention.

    Per map (the last two dimensions), the patches are taken in decreasing order of attention until their sum
    reaches `mass` times the map's total (the [CLS] token's own weight is not part of the maps), as in the reference's
    `visualize_attention.py`.

    Args:
        attentions: `(..., h, w)` non-negative maps, e.g. from [`attention_maps`].
        mass: the fraction of the attention to keep, in (0, 1].

    Returns:
        A boolean tensor shaped like `attentions`.

    Example:

    ```python
    >>> import torch
    >>> threshold_attention(torch.tensor([[0.5, 0.3], [0.1, 0.1]]), mass=0.6).int()
    tensor([[1, 1],
            [0, 0]], dtype=torch.int32)
    ```
    """
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}.")
    flat = attentions.flatten(-2).double()
    values, order = flat.sort(dim=-1, descending=True)
    fractions = values / values.sum(dim=-1, keepdim=True)
    # A patch is kept while the mass before it is still short of the target.
    keep_sorted = (fractions.cumsum(dim=-1) - fractions) < mass
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return keep.reshape(attentions.shape)


def colorize(values: np.ndarray) -> np.ndarray:
    """`(h, w)` values -> `(h, w, 3)` uint8 viridis colours, after scaling the values to [0, 1] (min to max)."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min()
    scaled = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    anchors = np.linspace(0.0, 1.0, len(_VIRIDIS))
    channels = [np.interp(scaled, anchors, _VIRIDIS[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def _upsample(grid: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upsampling of the patch grid to pixels (each patch becomes a `factor x factor` square)."""
    return grid.repeat(factor, axis=0).repeat(factor, axis=1)


def _overlay(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """Blend `colour` (`(3,)`, or `(H, W, 3)` per pixel) into the image where `mask` is on."""
    colour = np.broadcast_to(colour, image.shape)
    blended = image.astype(np.float64)
    blended[mask] = (1.0 - alpha) * blended[mask] + alpha * colour[mask]
    return np.rint(blended).astype(np.uint8)


def save_attention_grid(
    image: Image.Image | np.ndarray,
    attentions: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray | None,
    path: str | Path,
    *,
    alpha: float = 0.5,
    padding: int = 4,
) -> Image.Image:
    """Write a PNG grid: the image and each head's attention map; below, the thresholded masks over the image.

    Layout, with `n` heads: the first row holds the image, then the `n` maps (nearest-upsampled from the patch grid
    to the image size, viridis, each scaled to its own min-max); the second row (when `masks` is given) holds the
    image with all heads' masks overlaid (one colour per head, averaged where heads overlap), then each head's mask
    over the image. Tiles are
    separated by `padding` white pixels, so the PNG is `(1 + n) * W + n * padding` wide and
    `rows * H + (rows - 1) * padding` high.

    Args:
        image: the RGB image the maps were computed on (PIL or `(H, W, 3)` uint8), `H` and `W` multiples of the
            patch grid's `h` and `w` by the same factor (the patch size).
        attentions: `(heads, h, w)` maps of that image, e.g. `attention_maps(model, pixel_values)[0]`.
        masks: `(heads, h, w)` booleans, e.g. `threshold_attention(maps)`, or `None` for the first row only.
        path: where to write the PNG (parent folders are created).
        alpha: opacity of the mask colours.
        padding: white pixels between tiles.

    Returns:
        The grid as a PIL image.
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    maps = attentions.detach().cpu().float().numpy() if isinstance(attentions, torch.Tensor) else attentions
    if pixels.ndim != 3 or pixels.shape[2] != 3 or maps.ndim != 3:
        raise ValueError(
            f"Expected an (H, W, 3) image and (heads, h, w) attentions, got {pixels.shape} and {maps.shape}."
        )
    (height, width), (num_heads, grid_h, grid_w) = pixels.shape[:2], maps.shape
    factor = height // grid_h
    if height != factor * grid_h or width != factor * grid_w:
        raise ValueError(
            f"The image ({height}x{width}) is not the {grid_h}x{grid_w} patch grid times one patch size; pass the "
            "image the maps were computed on (e.g. from prepare_image)."
        )
    top = [pixels] + [colorize(_upsample(m, factor)) for m in maps]
    rows = [top]
    if masks is not None:
        masks = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
        if masks.shape != maps.shape:
            raise ValueError(f"masks {masks.shape} must be shaped like the attentions {maps.shape}.")
        masks = [_upsample(m.astype(bool), factor) for m in masks]
        colours = [_MASK_COLOURS[i % len(_MASK_COLOURS)] for i in range(num_heads)]
        # Where heads overlap, their colours are averaged, so every head stays visible in the summary tile.
        stacked = np.stack(masks).astype(np.float64)[..., None]
        coverage = stacked.sum(axis=0)
        mean_colour = (stacked * np.stack(colours)[:, None, None, :]).sum(axis=0) / np.maximum(coverage, 1.0)
        combined = _overlay(pixels, coverage[..., 0] > 0, mean_colour, alpha)
        rows.append([combined] + [_overlay(pixels, m, c, alpha) for m, c in zip(masks, colours)])

    columns = len(top)
    canvas = np.full(
        (len(rows) * height + (len(rows) - 1) * padding, columns * width + (columns - 1) * padding, 3),
        255,
        dtype=np.uint8,
    )
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            y, x = r * (height + padding), c * (width + padding)
            canvas[y : y + height, x : x + width] = tile
    grid = Image.fromarray(canvas)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return grid


def read_frames(path: str | Path) -> tuple[list[Image.Image], list[str], float | None]:
    """The frames of a video: a folder of images (sorted by name) or a video file.

    Video files need the optional `imageio` with its `pyav` plugin (`pip install imageio av`).

    Returns:
        The RGB frames, a name per frame (the file stems, or `frame-00000`...), and the video's frame rate when the
        file states one (`None` for a folder).
    """
    from .image_files import list_images, load_rgb

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No video file or folder of frames at {path}.")
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise FileNotFoundError(f"No image files in {path}.")
        return [load_rgb(f) for f in files], [f.stem for f in files], None
    try:
        import imageio.v3 as iio
    except ImportError as error:
        raise ImportError(
            f"Reading the video file {path} needs imageio and av (pip install imageio av); or pass a folder of frames."
        ) from error
    frames = [Image.fromarray(frame).convert("RGB") for frame in iio.imiter(path, plugin="pyav")]
    fps = iio.immeta(path, plugin="pyav").get("fps")
    return frames, [f"frame-{i:05d}" for i in range(len(frames))], fps


def save_animation(images: Sequence[Image.Image], path: str | Path, fps: float = 10.0) -> Path:
    """Write frames as an animated GIF (PIL) or, for a `.mp4` path, an MP4 (needs `imageio` with `av`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        first, *rest = images
        first.save(path, save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)
        return path
    try:
        import imageio.v3 as iio
    except ImportError as error:
        raise ImportError(f"Writing {path.suffix} needs imageio and av (pip install imageio av); use .gif.") from error
    iio.imwrite(path, np.stack([np.asarray(image) for image in images]), plugin="pyav", codec="libx264", fps=fps)
    return path


@torch.no_grad()
def attention_video(
    model: DinoViTModel,
    frames: Sequence[Image.Image],
    names: Sequence[str],
    output_dir: str | Path,
    image_size: int | Sequence[int] | None = None,
    fps: float = 10.0,
    video_format: str = "gif",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[list[Path], Path]:
    """The reference's video mode (`video_generation.py`): each frame's attention, averaged over heads, as an image.

    Every frame goes through [`prepare_image`] and [`attention_maps`]; the heads' mean map is upsampled to the
    frame (nearest, one square per patch) and coloured (viridis, min-max per frame). Writes
    `<output_dir>/attention/attn-<name>.png` per frame and `<output_dir>/attention.<video_format>` (`gif`, or `mp4`
    with imageio).

    Returns:
        The frame files and the animation file.
    """
    require_attention(model, "Attention maps")
    output_dir = Path(output_dir)
    (output_dir / "attention").mkdir(parents=True, exist_ok=True)
    paths, images = [], []
    device = next(model.parameters()).device
    for frame, name in zip(frames, names):
        _, pixel_values = prepare_image(frame, image_size, model.config.patch_size, mean, std)
        maps = attention_maps(model, pixel_values.to(device))[0].float().mean(dim=0).cpu().numpy()
        image = Image.fromarray(colorize(_upsample(maps, model.config.patch_size)))
        paths.append(output_dir / "attention" / f"attn-{name}.png")
        image.save(paths[-1])
        images.append(image)
    return paths, save_animation(images, output_dir / f"attention.{video_format}", fps)


__all__ = [
    "attention_maps",
    "attention_video",
    "colorize",
    "read_frames",
    "save_animation",
    "save_attention_grid",
    "threshold_attention",
]
