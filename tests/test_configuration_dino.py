import pytest
from transformers import AutoConfig

from dino_hf import DinoConfig


def test_defaults_are_the_papers_vit_small_16():
    config = DinoConfig()
    assert (config.image_size, config.patch_size, config.hidden_size) == (224, 16, 384)
    assert (config.num_hidden_layers, config.num_attention_heads, config.mlp_ratio) == (12, 6, 4.0)
    assert config.qkv_bias and config.layer_norm_eps == 1e-6 and config.initializer_range == 0.02
    assert (config.out_dim, config.head_hidden_dim, config.head_bottleneck_dim, config.head_num_layers) == (
        65536,
        2048,
        256,
        3,
    )
    assert config.norm_last_layer and not config.use_bn_in_head
    assert (config.student_temp, config.teacher_temp, config.center_momentum) == (0.1, 0.07, 0.9)


@pytest.mark.parametrize(
    ("name", "width", "heads"), [("vit_tiny", 192, 3), ("vit_small", 384, 6), ("vit_base", 768, 12)]
)
@pytest.mark.parametrize("patch_size", [16, 8])
def test_presets(name, width, heads, patch_size):
    config = DinoConfig.from_preset(name, patch_size=patch_size, out_dim=4096)
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (width, heads, 12)
    assert config.patch_size == patch_size and config.out_dim == 4096


def test_unknown_preset():
    with pytest.raises(ValueError, match="vit_small"):
        DinoConfig.from_preset("vit_huge")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_size": 100, "num_attention_heads": 6}, "must divide hidden_size"),
        ({"image_size": 100, "patch_size": 16}, "divisible by patch_size"),
        ({"patch_size": 0}, "patch_size must be a positive integer"),
        ({"hidden_size": -8}, "hidden_size must be a positive integer"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
        ({"out_dim": 0}, "out_dim must be a positive integer"),
        ({"head_bottleneck_dim": 0}, "head_bottleneck_dim must be a positive integer"),
        ({"student_temp": 0.0}, "student_temp must be a positive temperature"),
        ({"teacher_temp": -0.04}, "teacher_temp must be a positive temperature"),
        ({"center_momentum": 1.5}, r"center_momentum must be in \[0, 1\]"),
        ({"center_momentum": -0.1}, r"center_momentum must be in \[0, 1\]"),
        ({"drop_path_rate": 1.0}, r"drop_path_rate must be in \[0, 1\)"),
        ({"mlp_ratio": 0}, "mlp_ratio must be positive"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps must be positive"),
    ],
)
def test_invalid_values_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        DinoConfig(**overrides)


def test_round_trip_and_auto_config(tmp_path):
    config = DinoConfig.from_preset("vit_base", patch_size=8, out_dim=1024, teacher_temp=0.07)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, DinoConfig)

    def without_path(c):
        return {k: v for k, v in c.to_dict().items() if k != "_name_or_path"}

    assert without_path(loaded) == without_path(config)
    assert loaded.auto_map["AutoConfig"] == "configuration_dino.DinoConfig"


def test_resnet_backbone_fields():
    config = DinoConfig.from_preset("resnet50")
    assert (config.backbone, config.feature_size, config.has_batch_norm) == ("resnet", 2048, True)
    assert DinoConfig().feature_size == 384 and not DinoConfig().has_batch_norm
    resnet = config.resnet_config()
    assert (resnet.depths, resnet.downsample_in_bottleneck) == ([3, 4, 6, 3], False)
    assert DinoConfig.from_resnet_config(resnet).resnet_hidden_sizes == [256, 512, 1024, 2048]
    with pytest.raises(ValueError, match="backbone must be one of"):
        DinoConfig(backbone="xcit")
    with pytest.raises(ValueError, match="equal length"):
        DinoConfig(backbone="resnet", resnet_depths=[1, 1])
