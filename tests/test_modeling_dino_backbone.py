"""`DinoBackbone` (`AutoBackbone` for model_type "dino"): feature maps equal to the ViT's own hidden states, every
weight loaded from a `DinoViTModel` folder, and transformers' dense models (UperNet, DPT) training on it."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES, tiny_config
from safetensors.torch import load_file, save_file
from transformers import (
    AutoBackbone,
    AutoConfig,
    DPTConfig,
    DPTForDepthEstimation,
    ResNetBackbone,
    ResNetModel,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from dino_hf import DinoBackbone, DinoConfig, DinoForSelfDistillation, DinoViTModel, MissingWeightsError


DEMO_BACKBONE = FIXTURES / "dino_demo_pretrained"


def saved_vit(folder, **overrides) -> DinoViTModel:
    """A tiny DinoViTModel with every tensor moved off its initial value (so a tensor left random shows), saved."""
    model = DinoViTModel(tiny_config(num_hidden_layers=3, **overrides))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(folder)
    return model.eval()


def as_grid(tokens: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """`(B, 1 + h*w, D)` tokens -> `(B, D, h, w)` patch grid, [CLS] dropped: the definition the maps must meet."""
    batch, _, dim = tokens.shape
    patches = tokens[:, 1:]
    grid = torch.empty(batch, dim, height // patch_size, width // patch_size)
    for row in range(height // patch_size):
        for col in range(width // patch_size):
            grid[:, :, row, col] = patches[:, row * (width // patch_size) + col]
    return grid


@pytest.mark.parametrize(("height", "width"), [(32, 32), (40, 24), (16, 48)])
def test_auto_backbone_of_a_saved_vit_gives_its_normed_hidden_states_as_maps(tmp_path, height, width):
    vit = saved_vit(tmp_path)
    backbone = AutoBackbone.from_pretrained(tmp_path, out_indices=[1, 2])
    assert type(backbone) is DinoBackbone and not backbone.training
    assert backbone.out_features == ["stage1", "stage2"] and backbone.channels == [64, 64]
    pixels = torch.randn(2, 3, height, width)  # non-square and non-native sizes: interpolated positions
    with torch.no_grad():
        maps = backbone(pixels).feature_maps
        hidden_states = vit(pixels, output_hidden_states=True).hidden_states  # embeddings, block 1, 2, 3
    assert len(maps) == 2
    for feature_map, index in zip(maps, (1, 2)):
        assert feature_map.shape == (2, 64, height // 8, width // 8)
        expected = as_grid(vit.layernorm(hidden_states[index]), height, width, 8)
        torch.testing.assert_close(feature_map, expected, rtol=0, atol=1e-6)


def test_the_maps_are_the_reference_get_intermediate_layers_reshaped(reference):
    """The reference's `get_intermediate_layers(x, 2)` (final norm applied), pinned in the fixtures."""
    from test_modeling_dino import reference_backbone

    vit = reference_backbone(reference)
    backbone = DinoBackbone.from_backbone(vit, out_indices=[-2, -1])
    pixels = reference["input.32x32"]
    with torch.no_grad():
        maps = backbone(pixels).feature_maps
    for feature_map, tokens in zip(maps, reference["output.intermediate_last2.32x32"]):
        torch.testing.assert_close(feature_map, as_grid(tokens, 32, 32, 8), rtol=0, atol=1e-5)


def test_every_weight_of_a_vit_folder_is_used_and_a_missing_one_raises(tmp_path):
    vit = saved_vit(tmp_path / "vit")
    backbone, info = DinoBackbone.from_pretrained(tmp_path / "vit", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert backbone.state_dict().keys() == vit.state_dict().keys()
    for name, value in vit.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], value), name
    shutil.copytree(tmp_path / "vit", tmp_path / "partial")
    state = load_file(tmp_path / "partial" / "model.safetensors")
    del state["encoder.layer.2.mlp.fc1.weight"]
    save_file(state, tmp_path / "partial" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MissingWeightsError, match=r"encoder\.layer\.2\.mlp\.fc1\.weight"):
        AutoBackbone.from_pretrained(tmp_path / "partial")


def test_a_config_saved_before_the_backbone_fields_loads_with_their_defaults(tmp_path):
    values = json.loads((DEMO_BACKBONE / "config.json").read_text())
    assert not {"out_features", "out_indices", "stage_names", "apply_layernorm"} & set(values)  # an old config
    config = AutoConfig.from_pretrained(DEMO_BACKBONE)
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3"]
    assert (config.out_features, config.out_indices) == (["stage3"], [3])
    assert config.apply_layernorm and config.reshape_hidden_states
    # The demo model still loads as itself, and as a backbone, every weight used.
    assert type(DinoViTModel.from_pretrained(DEMO_BACKBONE)) is DinoViTModel
    backbone = AutoBackbone.from_pretrained(DEMO_BACKBONE, out_features=["stem", "stage2"])
    assert backbone.out_indices == [0, 2]
    backbone.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["out_features"], saved["out_indices"]) == (["stem", "stage2"], [0, 2])
    assert saved["auto_map"]["AutoBackbone"] == "modeling_dino.DinoBackbone"
    assert AutoBackbone.from_pretrained(tmp_path).out_features == ["stem", "stage2"]


def test_flags_stem_sequences_and_the_layernorm_switch():
    vit = DinoViTModel(tiny_config(num_hidden_layers=3)).eval()
    pixels = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        hidden_states = vit(pixels, output_hidden_states=True).hidden_states
        raw = DinoBackbone.from_backbone(vit, out_indices=[0, -1], apply_layernorm=False, reshape_hidden_states=False)
        stem, last = raw(pixels).feature_maps
        torch.testing.assert_close(stem, hidden_states[0], rtol=0, atol=0)  # the embeddings, [CLS] first
        torch.testing.assert_close(last, hidden_states[3], rtol=0, atol=0)
        normed = DinoBackbone.from_backbone(vit, out_features=["stage3"], reshape_hidden_states=False)
        torch.testing.assert_close(normed(pixels).feature_maps[0], vit(pixels).last_hidden_state, rtol=0, atol=1e-6)
    assert raw.out_features == ["stem", "stage3"] and raw.stage_names == ["stem", "stage1", "stage2", "stage3"]
    assert raw.out_feature_channels == dict.fromkeys(raw.stage_names, 64)
    with pytest.raises(ValueError, match="out_features and out_indices should correspond"):
        DinoBackbone.from_backbone(vit, out_features=["stage1"], out_indices=[2])
    with pytest.raises(ValueError, match="ResNet"):
        DinoBackbone(DinoConfig(backbone="resnet"))


def test_hidden_states_attentions_and_tuples(tmp_path):
    saved_vit(tmp_path)
    backbone = DinoBackbone.from_pretrained(tmp_path, out_indices=[2, 3])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        plain = backbone(pixels)
        assert plain.hidden_states is None and plain.attentions is None
        assert len(backbone(pixels, output_hidden_states=True).hidden_states) == 4
        as_tuple = backbone(pixels, return_dict=False)
        torch.testing.assert_close(as_tuple[0][1], plain.feature_maps[1], rtol=0, atol=0)
        with pytest.raises(ValueError, match="eager"):
            backbone(pixels, output_attentions=True)
        eager = DinoBackbone.from_pretrained(tmp_path, out_indices=[2, 3], attn_implementation="eager")
        attentions = eager(pixels, output_attentions=True).attentions
        assert len(attentions) == 3 and attentions[0].shape == (1, 4, 17, 17)
        torch.testing.assert_close(eager(pixels).feature_maps[1], plain.feature_maps[1], rtol=0, atol=1e-5)


def test_bf16_autocast_keeps_the_maps_close_and_gradients_flow():
    backbone = DinoBackbone(tiny_config(out_indices=[1, 2]))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = backbone.eval()(pixels).feature_maps
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = backbone(pixels).feature_maps
    for a, b in zip(full, half):
        assert (a - b.float()).norm() / a.norm() < 2e-2  # bf16's 8-bit mantissa through two blocks
    backbone.train()
    sum(feature_map.square().mean() for feature_map in backbone(pixels).feature_maps).backward()
    # Block 3's own weights are not on the path to stages 1 and 2; everything before them and the norm is.
    unused = {n for n, p in backbone.named_parameters() if p.grad is None}
    assert unused == {n for n, _ in backbone.named_parameters() if n.startswith("encoder.layer.2.")}


def test_auto_backbone_of_an_exported_dino_resnet_is_transformers_resnet_backbone(tmp_path):
    resnet = dict(resnet_embedding_size=8, resnet_hidden_sizes=[8, 16], resnet_depths=[1, 1], out_dim=16)
    run = DinoForSelfDistillation(DinoConfig(backbone="resnet", **resnet))
    run.export_teacher_backbone().save_pretrained(tmp_path / "export")
    backbone = AutoBackbone.from_pretrained(tmp_path / "export", out_features=["stage1", "stage2"])
    assert type(backbone) is ResNetBackbone and backbone.channels == [8, 16]
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ResNetModel.from_pretrained(tmp_path / "export").eval()(pixels, output_hidden_states=True)
        torch.testing.assert_close(backbone(pixels).feature_maps[-1], expected.last_hidden_state, rtol=0, atol=0)
    with pytest.raises(ValueError, match="ResNet.*ResNetBackbone"):
        DinoBackbone.from_pretrained(tmp_path / "export")


def test_a_training_run_gives_its_teacher_as_backbone(tmp_path):
    from test_hub import saved_run  # a run whose teacher differs from its student

    run, _ = saved_run(tmp_path)
    backbone = AutoBackbone.from_pretrained(tmp_path, out_indices=[1])
    assert type(backbone) is DinoBackbone and backbone.out_features == ["stage1"]
    teacher = run.teacher.backbone.state_dict()
    assert all(torch.equal(value, teacher[name]) for name, value in backbone.state_dict().items())


# ---------------------------------------------------------------------------------------------------------------------
# transformers' dense models with a DINO backbone
# ---------------------------------------------------------------------------------------------------------------------


def shapes_batch(batch: int = 8, height: int = 32, width: int = 48):
    """Images with a bright square on noise, and its mask: something a segmentation head can learn."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, height, width, generator=generator) * 0.3
    labels = torch.zeros(batch, height, width, dtype=torch.long)
    for i in range(batch):
        top, left = torch.randint(0, height - 12, (2,), generator=generator).tolist()
        labels[i, top : top + 12, left : left + 12] = 1 + i % 2
        pixels[i, i % 2, top : top + 12, left : left + 12] += 2.0  # the class is the colour
    return pixels, labels


SMALL_VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2)


def test_upernet_with_a_dino_backbone_trains():
    torch.manual_seed(0)
    backbone_config = DinoConfig(**SMALL_VIT, drop_path_rate=0.0, out_indices=[1, 2, 3, 4])
    config = UperNetConfig(
        backbone_config=backbone_config, hidden_size=32, auxiliary_channels=16, num_labels=3, pool_scales=[1, 2]
    )
    model = UperNetForSemanticSegmentation(config)
    assert type(model.backbone) is DinoBackbone
    # Pretrained weights go in as for any transformers backbone: copy a DINO backbone's state.
    vit = DinoViTModel(DinoConfig(**SMALL_VIT))
    model.backbone.load_state_dict(DinoBackbone.from_backbone(vit).state_dict())
    pixels, labels = shapes_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(12):
        output = model(pixel_values=pixels, labels=labels)
        assert output.logits.shape == (8, 3, 32, 48)  # non-square input, logits at the input size
        output.loss.backward()
        assert model.backbone.encoder.layer[0].mlp.fc1.weight.grad.abs().sum() > 0  # fine-tuned end to end
        optimizer.step()
        optimizer.zero_grad()
        losses.append(output.loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.5 * losses[0], losses  # 1.52 -> 0.59


def test_dpt_with_a_dino_backbone_runs_forward_and_backward():
    torch.manual_seed(0)
    # DPT's reassemble stage reads token sequences with [CLS] (its readout): reshape_hidden_states=False.
    backbone_config = DinoConfig(**SMALL_VIT, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DPTConfig(
        backbone_config=backbone_config, is_hybrid=False, hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5], image_size=32, patch_size=8,
    )  # fmt: skip
    model = DPTForDepthEstimation(config)
    assert type(model.backbone) is DinoBackbone
    pixels = torch.randn(2, 3, 32, 32)
    depth = model(pixel_values=pixels).predicted_depth
    assert depth.shape == (2, 64, 64)
    F.mse_loss(depth, torch.rand_like(depth)).backward()
    assert model.backbone.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
