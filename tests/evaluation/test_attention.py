"""Attention maps: the reference's numbers, the 60% masks against brute force, and the PNG grid."""

import importlib.util
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from dino_hf import DinoForSelfDistillation, DinoViTModel
from dino_hf.conversion import convert_reference_backbone_state_dict
from dino_hf.evaluation import attention_maps, prepare_image, save_attention_grid, threshold_attention
from dino_hf.evaluation.attention import colorize
from dino_hf.testing_utils import tiny_config


def test_maps_are_the_reference_cls_attention_on_the_patch_grid(reference):
    model = DinoViTModel(tiny_config())
    state = {k[len("backbone.") :]: v for k, v in reference.items() if k.startswith("backbone.")}
    model.load_state_dict(convert_reference_backbone_state_dict(state))
    model.eval()
    assert model.config._attn_implementation == "sdpa"  # fused attention elsewhere, explicit in the last block
    maps = attention_maps(model, reference["input.32x32"])
    expected = reference["output.last_selfattention.32x32"]
    assert maps.shape == (2, 4, 4, 4)
    assert (maps - expected[:, :, 0, 1:].reshape(2, 4, 4, 4)).abs().max() < 1e-5
    # With the [CLS]->[CLS] weight, each head's row of probabilities sums to 1.
    torch.testing.assert_close(maps.sum(dim=(-2, -1)) + expected[:, :, 0, 0], torch.ones(2, 4), rtol=0, atol=1e-5)


def test_non_square_maps_are_row_major_on_the_patch_grid():
    model = DinoViTModel(tiny_config()).eval()
    pixels = torch.randn(1, 3, 16, 40)  # 2 x 5 patches
    maps = attention_maps(model, pixels)
    attentions = model.get_last_selfattention(pixels)
    assert maps.shape == (1, 4, 2, 5)
    torch.testing.assert_close(maps[0, :, 1, 3], attentions[0, :, 0, 1 + 1 * 5 + 3])
    torch.testing.assert_close(attentions.sum(-1), torch.ones(1, 4, 11))


def brute_force_smallest_set(values: np.ndarray, mass: float) -> tuple[int, float]:
    """Size of the smallest subset of patches holding `mass` of the total, found by trying every subset."""
    total = values.sum()
    for size in range(1, len(values) + 1):
        best = max(values[list(s)].sum() for s in itertools.combinations(range(len(values)), size))
        if best >= mass * total - 1e-12:
            return size, best / total
    raise AssertionError


@pytest.mark.parametrize("mass", [0.6, 0.3, 0.9, 1.0])
def test_masks_keep_the_mass_with_the_fewest_patches(mass):
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 5, 2, 4, generator=generator) ** 4  # peaked, like attention
    maps[0, 0] = 1.0 / 8  # a uniform head: ties everywhere
    masks = threshold_attention(maps, mass=mass)
    assert masks.dtype == torch.bool and masks.shape == maps.shape
    for index in itertools.product(range(3), range(5)):
        values, mask = maps[index].double().numpy().ravel(), masks[index].numpy().ravel()
        kept = values[mask].sum() / values.sum()
        size, _ = brute_force_smallest_set(values, mass)
        assert kept >= mass - 1e-9, index
        assert mask.sum() == size, index
        # What is kept is never less attended than what is dropped.
        if (~mask).any():
            assert values[mask].min() >= values[~mask].max()


def test_mask_mass_is_relative_to_the_patches():
    maps = torch.tensor([[0.2, 0.1], [0.05, 0.05]])  # sums to 0.4: the rest went to [CLS]
    assert threshold_attention(maps, 0.5).tolist() == [[True, False], [False, False]]  # 0.2 / 0.4
    assert threshold_attention(maps, 0.6).tolist() == [[True, True], [False, False]]  # 0.3 / 0.4
    assert threshold_attention(maps, 0.8).sum() == 3
    with pytest.raises(ValueError, match="mass must be in"):
        threshold_attention(maps, 0.0)


def test_attention_grid_png(tmp_path):
    model = DinoViTModel(tiny_config()).eval()
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    image, pixels = prepare_image(photo, image_size=(24, 40), patch_size=8)
    assert image.size == (40, 24) and pixels.shape == (1, 3, 24, 40)
    maps = attention_maps(model, pixels)[0]
    masks = threshold_attention(maps, 0.6)
    grid = save_attention_grid(image, maps, masks, tmp_path / "out" / "attention.png", padding=2)

    written = Image.open(tmp_path / "out" / "attention.png")
    assert written.format == "PNG" and written.size == grid.size == (5 * 40 + 4 * 2, 2 * 24 + 2)
    canvas = np.asarray(written.convert("RGB"))
    np.testing.assert_array_equal(canvas[:24, :40], np.asarray(image))  # the image, first
    # Head 2's tile: each 8x8 patch is one colour, the colormap of that patch's scaled attention.
    tile = canvas[:24, 2 * 42 : 2 * 42 + 40]
    expected = colorize(maps[1].numpy())
    np.testing.assert_array_equal(tile[::8, ::8], expected)
    np.testing.assert_array_equal(tile[7::8, 7::8], expected)
    # Below head 2: the image, tinted where the mask is on and untouched elsewhere.
    mask_tile = canvas[26:, 2 * 42 : 2 * 42 + 40]
    on = masks[1].numpy().repeat(8, 0).repeat(8, 1)
    np.testing.assert_array_equal(mask_tile[~on], np.asarray(image)[~on])
    assert (mask_tile[on] != np.asarray(image)[on]).any()

    only_maps = save_attention_grid(image, maps, None, tmp_path / "maps.png", padding=0)
    assert only_maps.size == (5 * 40, 24)
    with pytest.raises(ValueError, match="patch grid times one patch size"):
        save_attention_grid(photo, maps, masks, tmp_path / "bad.png")


def test_prepare_image_keeps_the_aspect_ratio_and_crops_to_the_patch_grid():
    photo = Image.new("RGB", (100, 60), (255, 0, 0))
    image, pixels = prepare_image(photo, image_size=50, patch_size=16)  # shorter side 50 -> 83 x 50 -> 80 x 48
    assert image.size == (80, 48) and pixels.shape == (1, 3, 48, 80)
    torch.testing.assert_close(pixels[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225]))


def test_visualize_attention_example_on_a_training_run_folder(tmp_path):
    import dino_hf.cli.visualize_attention as example  # examples/visualize_attention.py runs its main

    DinoForSelfDistillation(tiny_config()).save_pretrained(tmp_path / "run")  # the teacher backbone is used
    path = example.run(
        ["--model_name_or_path", str(tmp_path / "run"), "--image_size", "40", "--output_dir", str(tmp_path / "out")]
    )
    grid = Image.open(path)
    # Demo image 480x480 -> shorter side 40 -> 40x40 (5x5 patches of 8); 1 + 4 heads, 2 rows, 4px padding.
    assert grid.size == (5 * 40 + 4 * 4, 2 * 40 + 4)


def test_video_mode_writes_every_frame_and_a_gif(tiny_model_folder, tmp_path):
    from dino_hf.cli.visualize_attention import run as main
    from dino_hf.evaluation.attention import _upsample
    from dino_hf.evaluation.synthetic_datasets import generate_video_demo

    frames = generate_video_demo(tmp_path / "davis", num_frames=5, size=32) / "JPEGImages" / "480p" / "shapes"
    animation = main(
        ["--model_name_or_path", str(tiny_model_folder), "--video_path", str(frames), "--output_dir", str(tmp_path)]
    )
    assert animation == tmp_path / "attention.gif"
    with Image.open(animation) as gif:
        assert gif.n_frames == 5 and gif.size == (32, 32)
    written = sorted((tmp_path / "attention").glob("attn-*.png"))
    assert [p.name for p in written] == [f"attn-{i:05d}.png" for i in range(5)]
    # Each frame: the heads' mean [CLS] attention, one square per patch, coloured.
    model = DinoViTModel.from_pretrained(tiny_model_folder).eval()
    _, pixels = prepare_image(Image.open(frames / "00003.jpg"), None, 8, (0.5,) * 3, (0.25,) * 3)
    expected = colorize(_upsample(attention_maps(model, pixels)[0].mean(0).numpy(), 8))
    np.testing.assert_array_equal(np.asarray(Image.open(written[3])), expected)


def test_mp4_without_imageio_says_what_to_install(tmp_path):
    from dino_hf.evaluation.attention import save_animation

    if importlib.util.find_spec("imageio") is not None:
        pytest.skip("imageio is installed")
    with pytest.raises(ImportError, match="pip install imageio av"):
        save_animation([Image.new("RGB", (8, 8))] * 2, tmp_path / "a.mp4")


def test_video_file_round_trip_with_imageio(tiny_model_folder, tmp_path):
    pytest.importorskip("imageio")
    pytest.importorskip("av")
    from dino_hf.cli.visualize_attention import run as main
    from dino_hf.evaluation.attention import read_frames, save_animation

    clip = save_animation([Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(4)], tmp_path / "clip.mp4", fps=5)
    frames, names, fps = read_frames(clip)
    assert len(frames) == 4 and frames[0].size == (32, 32) and fps == pytest.approx(5)
    animation = main(
        ["--model_name_or_path", str(tiny_model_folder), "--video_path", str(clip), "--output_dir", str(tmp_path / "o"),
         "--video_format", "mp4"]
    )  # fmt: skip
    assert animation.suffix == ".mp4" and len(read_frames(animation)[0]) == 4
    assert len(list((tmp_path / "o" / "attention").glob("attn-frame-*.png"))) == 4
