"""Checkpoint conversion: every source format built locally, outputs compared in fp32 after conversion."""

import argparse
import pathlib
import types

import pytest
import torch
from conftest import FIXTURES, dino_vits16_config, tiny_config
from safetensors.torch import save_file
from transformers import ViTConfig, ViTForImageClassification, ViTModel
from transformers.initialization import no_init_weights

from dino_hf import DinoConfig, DinoForSelfDistillation, DinoViTModel
from dino_hf.conversion import (
    from_official_checkpoint,
    from_timm_checkpoint,
    from_vit_model,
    read_linear_probe,
    to_vit_model,
)


SIZES = ("32x32", "16x16", "32x24")


def reference_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A DinoViTModel state dict in the reference / timm key layout (written out here, independently of the library)."""
    out = {}
    for key, value in state.items():
        key = (
            key.replace("embeddings.cls_token", "cls_token")
            .replace("embeddings.position_embeddings", "pos_embed")
            .replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
            .replace("encoder.layer.", "blocks.")
            .replace(".attention.qkv.", ".attn.qkv.")
            .replace(".attention.proj.", ".attn.proj.")
        )
        out["norm." + key[len("layernorm.") :] if key.startswith("layernorm.") else key] = value
    return out


def reference_backbone_state(reference) -> dict[str, torch.Tensor]:
    return {k[len("backbone.") :]: v for k, v in reference.items() if k.startswith("backbone.")}


def reference_training_checkpoint(reference, args) -> dict:
    """A full training checkpoint as the reference's main_dino.py saves it (nested dicts, Namespace, optimizer...)."""
    return {
        "student": {k[len("student.") :]: v for k, v in reference.items() if k.startswith("student.")},
        "teacher": {k[len("teacher.") :]: v for k, v in reference.items() if k.startswith("teacher.")},
        "optimizer": {
            "state": {0: {"momentum_buffer": torch.zeros(3)}},
            "param_groups": [{"lr": 1e-4, "params": [0]}],
        },
        "epoch": 7,
        "args": args,
        "dino_loss": {"center": reference["dino_loss.center"]},
    }


def perturb_(model: torch.nn.Module, scale: float = 0.02) -> torch.nn.Module:
    """Move every parameter (LayerNorms and biases too) off its initial value, so a misplaced key cannot pass."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * scale)
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------------------------------------
# Reference backbone files
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", ["plain", "ddp"])
def test_reference_backbone_reproduces_reference_outputs(reference, tmp_path, wrap):
    state = reference_backbone_state(reference)
    if wrap == "ddp":  # a backbone saved from the DDP-wrapped network
        state = {f"module.backbone.{k}": v for k, v in state.items()}
    torch.save(state, tmp_path / "dino_pretrain.pth")
    config = tiny_config()
    model = from_official_checkpoint(tmp_path / "dino_pretrain.pth", config)
    assert type(model) is DinoViTModel and not model.training
    assert model.config.architectures == ["DinoViTModel"] and config.architectures is None  # the caller's untouched
    with torch.no_grad():
        for size in SIZES:
            assert max_diff(model(reference[f"input.{size}"]).pooler_output, reference[f"output.cls.{size}"]) < 1e-5


def test_reference_backbone_config_is_inferred_from_the_weights():
    # A standard width (192 -> 3 heads); patch 16 and a 3x3 grid of position embeddings -> image size 48.
    source = perturb_(DinoViTModel(DinoConfig.from_preset("vit_tiny", image_size=48, num_hidden_layers=2)).eval())
    model = from_official_checkpoint(reference_layout(source.state_dict()))
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (192, 2, 3)
    assert (config.patch_size, config.image_size, config.mlp_ratio, config.qkv_bias) == (16, 48, 4, True)
    assert config.layer_norm_eps == 1e-6 and config.drop_path_rate == 0.0
    pixels = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        assert max_diff(model(pixels).last_hidden_state, source(pixels).last_hidden_state) == 0.0


def test_heads_of_a_non_standard_width_need_a_config(reference):
    with pytest.raises(ValueError, match=r"hidden size 64 is not one of the standard ViT widths.*pass config="):
        from_official_checkpoint(reference_backbone_state(reference))


def test_reference_backbone_key_errors(reference):
    state = reference_backbone_state(reference)
    with pytest.raises(ValueError, match=r"Keys not in the reference ViT layout: \['blocks.0.attn.extra'\]"):
        from_official_checkpoint({**state, "blocks.0.attn.extra": torch.zeros(1)}, tiny_config())
    incomplete = {k: v for k, v in state.items() if k != "norm.weight"}
    with pytest.raises(ValueError, match=r"missing \['layernorm.weight'\]"):
        from_official_checkpoint(incomplete, tiny_config())
    with pytest.raises(ValueError, match="does not fit DinoViTModel with this configuration"):
        from_official_checkpoint(state, tiny_config(hidden_size=128))
    with pytest.raises(FileNotFoundError):
        from_official_checkpoint("does-not-exist.pth")


# ---------------------------------------------------------------------------------------------------------------------
# Reference full training checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def test_full_checkpoint_loads_with_only_the_namespace_allowed_then_reproduces_the_reference(reference, tmp_path):
    # Other pickled objects still need the opt-in: weights_only=True with argparse.Namespace as the only addition.
    opaque = tmp_path / "opaque.pth"
    args = argparse.Namespace(arch="vit_small", output_dir=pathlib.PurePosixPath("/out"))
    torch.save(reference_training_checkpoint(reference, args), opaque)
    with pytest.raises(ValueError, match=r"argparse Namespaces.*pass allow_unpickling=True"):
        from_official_checkpoint(opaque, tiny_config())
    assert type(from_official_checkpoint(opaque, tiny_config(), allow_unpickling=True)) is DinoForSelfDistillation

    path = tmp_path / "checkpoint.pth"
    args = argparse.Namespace(arch="vit_small", drop_path_rate=0.0, teacher_temp=0.04, norm_last_layer=True)
    torch.save(reference_training_checkpoint(reference, args), path)
    model = from_official_checkpoint(path, tiny_config())
    assert type(model) is DinoForSelfDistillation
    assert not any(p.requires_grad for p in model.teacher.parameters())
    torch.testing.assert_close(model.center.center, reference["dino_loss.center"], rtol=0, atol=0)
    out = model.train()(reference["crops.global"], reference["crops.local"], teacher_temp=0.04)
    assert max_diff(out.student_logits, reference["output.student"]) < 1e-5
    assert max_diff(out.teacher_logits, reference["output.teacher"]) < 1e-5
    assert max_diff(out.loss, reference["output.loss"][0]) < 1e-5
    assert max_diff(model.center.center, reference["output.center_after"]) < 1e-5

    # The evaluation scripts' way: one network's backbone.
    teacher = from_official_checkpoint(path, tiny_config(), allow_unpickling=True, checkpoint_key="teacher")
    assert type(teacher) is DinoViTModel
    full = from_official_checkpoint(path, tiny_config(), allow_unpickling=True)
    with torch.no_grad():
        expected = full.teacher.backbone.eval()(reference["input.32x32"]).pooler_output
        assert max_diff(teacher(reference["input.32x32"]).pooler_output, expected) == 0.0
    with pytest.raises(ValueError, match=r"no entries under 'ema'.*\['dino_loss', 'student', 'teacher'\]"):
        from_official_checkpoint(path, tiny_config(), allow_unpickling=True, checkpoint_key="ema")


def test_full_checkpoint_flattened_in_safetensors_needs_no_unpickling(reference, tmp_path):
    flat = {k: v for k, v in reference.items() if k.startswith(("student.", "teacher.", "dino_loss."))}
    save_file(flat, tmp_path / "checkpoint.safetensors")
    model = from_official_checkpoint(tmp_path / "checkpoint.safetensors", tiny_config(drop_path_rate=0.0))
    with torch.no_grad():
        out = model.eval()(reference["crops.global"], reference["crops.local"], teacher_temp=0.04)
    assert max_diff(out.loss, reference["output.loss"][0]) < 1e-5


def test_full_checkpoint_with_stray_entries_is_an_error():
    # The fixtures file holds inputs and outputs next to the checkpoint tensors.
    with pytest.raises(
        ValueError, match=r"not a reference training checkpoint.*unexpected \[.*'schedule\.lr'.*\(49 in all\)"
    ):
        from_official_checkpoint(FIXTURES / "dino_reference_tiny.safetensors", tiny_config())


def network_in_reference_layout(network, ddp: bool) -> dict[str, torch.Tensor]:
    state = {f"backbone.{k}": v for k, v in reference_layout(network.backbone.state_dict()).items()}
    state.update({f"head.{k}": v for k, v in network.head.state_dict().items()})
    return {(f"module.{k}" if ddp else k): v for k, v in state.items()}


@pytest.mark.parametrize("with_args", [True, False])
def test_full_checkpoint_config_is_inferred_from_weights_and_args(with_args):
    config = DinoConfig.from_preset(
        "vit_tiny",
        image_size=32,
        num_hidden_layers=1,
        out_dim=64,
        head_hidden_dim=48,
        head_bottleneck_dim=16,
        head_num_layers=2,
        use_bn_in_head=True,
        norm_last_layer=False,
        drop_path_rate=0.05,
        teacher_temp=0.07,
    )
    source = perturb_(DinoForSelfDistillation(config))
    with torch.no_grad():  # the center and BatchNorm statistics too
        for buffer in source.buffers():
            if buffer.is_floating_point():
                buffer.add_(torch.rand_like(buffer))
    checkpoint = {
        "student": network_in_reference_layout(source.student, ddp=True),
        "teacher": network_in_reference_layout(source.teacher, ddp=False),
        "dino_loss": {"center": source.center.center},
    }
    if with_args:
        checkpoint["args"] = argparse.Namespace(drop_path_rate=0.05, teacher_temp=0.07, norm_last_layer=False)
    model = from_official_checkpoint(checkpoint)
    inferred = model.config
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size", "out_dim"):
        assert getattr(inferred, name) == getattr(config, name), name
    for name in ("head_hidden_dim", "head_bottleneck_dim", "head_num_layers", "use_bn_in_head", "norm_last_layer"):
        assert getattr(inferred, name) == getattr(config, name), name
    # Without args, the stochastic depth and temperature are DinoConfig's defaults.
    assert (inferred.drop_path_rate, inferred.teacher_temp) == (
        (0.05, 0.07) if with_args else (0.1, DinoConfig().teacher_temp)
    )
    theirs, ours = source.state_dict(), model.state_dict()
    assert sorted(theirs) == sorted(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)


def test_trained_last_layer_scale_contradicting_norm_last_layer_is_an_error(reference):
    checkpoint = reference_training_checkpoint(reference, args=None)
    del checkpoint["args"]
    checkpoint["student"]["module.head.last_layer.weight_g"] = torch.full((256, 1), 2.0)
    with pytest.raises(ValueError, match="norm_last_layer=True would freeze them"):
        from_official_checkpoint(checkpoint, tiny_config())


# ---------------------------------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------------------------------


def test_timm_state_dict_reproduces_reference_outputs(reference, tmp_path):
    state = reference_backbone_state(reference)  # timm's VisionTransformer uses the reference key layout
    # timm with num_classes=0 has an identity head; an empty tensor head is dropped too.
    save_file(
        {**state, "head.weight": torch.empty(0, 64), "head.bias": torch.empty(0)}, tmp_path / "model.safetensors"
    )
    model = from_timm_checkpoint(tmp_path / "model.safetensors", tiny_config())
    with torch.no_grad():
        for size in SIZES:
            assert max_diff(model(reference[f"input.{size}"]).pooler_output, reference[f"output.cls.{size}"]) < 1e-5
    with pytest.raises(ValueError, match=r"classifier head \{'head.weight': \(1000, 64\)"):
        from_timm_checkpoint({**state, "head.weight": torch.zeros(1000, 64)}, tiny_config())
    with pytest.raises(ValueError, match=r"Keys not in the reference ViT layout: \['fc_norm.weight'\]"):
        from_timm_checkpoint({**state, "fc_norm.weight": torch.ones(64)}, tiny_config())


def test_timm_vit_small_layout_infers_the_paper_config():
    source = perturb_(DinoViTModel(DinoConfig.from_preset("vit_small", patch_size=8, num_hidden_layers=1)).eval())
    model = from_timm_checkpoint(reference_layout(source.state_dict()))
    c = model.config
    assert (c.hidden_size, c.num_attention_heads, c.patch_size, c.image_size) == (384, 6, 8, 224)
    pixels = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        assert max_diff(model(pixels).pooler_output, source(pixels).pooler_output) == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# transformers ViTModel (the Hub's facebook/dino-vits16 layout) and back
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dino_vits16_vit():
    """A random ViTModel in the dino-vits16 configuration, 2 blocks deep for speed (with a pooler, unused by DINO)."""
    torch.manual_seed(0)
    return perturb_(ViTModel(dino_vits16_config(num_hidden_layers=2), add_pooling_layer=True)).eval()


@pytest.fixture(scope="module")
def pixels_224():
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_vit_model_in_the_full_dino_vits16_configuration_converts_to_the_paper_backbone():
    with no_init_weights():  # the structure is what is checked here, not values
        source = ViTModel(dino_vits16_config(), add_pooling_layer=False)
    model = from_vit_model(source)
    expected = DinoConfig.from_preset("vit_small", patch_size=16, layer_norm_eps=1e-12, drop_path_rate=0.0)
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "patch_size", "image_size"):
        assert getattr(model.config, name) == getattr(expected, name), name
    assert model.config.layer_norm_eps == 1e-12 and model.config.qkv_bias and model.config.hidden_act == "gelu"
    assert sum(p.numel() for p in model.parameters()) == 21_665_664  # ViT-S/16, the paper's "21M"


def test_vit_model_converts_with_equal_outputs_and_round_trips(dino_vits16_vit, pixels_224):
    model = from_vit_model(dino_vits16_vit)
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.mlp_ratio) == (384, 2, 6, 4)
    assert c.layer_norm_eps == 1e-12  # the source's, so outputs are the source's
    with torch.no_grad():
        expected = dino_vits16_vit(pixels_224).last_hidden_state
        out = model(pixels_224)
        assert max_diff(out.last_hidden_state, expected) < 1e-5
        # The DINO feature is the final-LayerNorm [CLS], not ViT's dense+tanh pooler.
        torch.testing.assert_close(out.pooler_output, expected[:, 0], rtol=0, atol=0)

        back = to_vit_model(model)
        assert back.pooler is None and back.config.layer_norm_eps == 1e-12
        assert max_diff(back(pixels_224).last_hidden_state, expected) < 1e-5
    source_state = {k: v for k, v in dino_vits16_vit.state_dict().items() if not k.startswith("pooler.")}
    back_state = back.state_dict()
    assert sorted(back_state) == sorted(source_state)
    assert all(torch.equal(back_state[k], source_state[k]) for k in source_state)


def test_vit_model_eps_policy(dino_vits16_vit, pixels_224):
    like_reference = from_vit_model(dino_vits16_vit, layer_norm_eps=1e-6)
    assert like_reference.config.layer_norm_eps == 1e-6
    assert all(m.eps == 1e-6 for m in like_reference.modules() if isinstance(m, torch.nn.LayerNorm))
    with torch.no_grad():
        kept = from_vit_model(dino_vits16_vit)(pixels_224).last_hidden_state
        changed = like_reference(pixels_224).last_hidden_state
    # Random-init activations are small, so eps matters here (see the docstring); the weights are the same.
    assert 0.0 < max_diff(kept, changed) < 0.1


def test_vit_model_from_folder_and_from_a_classification_model(dino_vits16_vit, pixels_224, tmp_path):
    dino_vits16_vit.save_pretrained(tmp_path / "vit")
    with torch.no_grad():
        expected = dino_vits16_vit(pixels_224).last_hidden_state
        assert max_diff(from_vit_model(tmp_path / "vit")(pixels_224).last_hidden_state, expected) < 1e-5
    classifier = ViTForImageClassification(ViTConfig(**{**dino_vits16_vit.config.to_dict(), "num_labels": 3}))
    classifier.vit.load_state_dict(dino_vits16_vit.state_dict(), strict=False)
    with torch.no_grad():
        converted = from_vit_model(classifier)(pixels_224).last_hidden_state
    assert max_diff(converted, expected) < 1e-5
    with pytest.raises(TypeError, match="Expected a transformers ViTModel"):
        from_vit_model(torch.nn.Linear(2, 2))


def test_reference_backbone_exports_to_vit_model(reference):
    model = from_official_checkpoint(reference_backbone_state(reference), tiny_config())
    vit = to_vit_model(model)
    assert isinstance(vit, ViTModel) and vit.config.layer_norm_eps == 1e-6
    with torch.no_grad():
        hidden = vit(reference["input.32x32"]).last_hidden_state
    assert max_diff(hidden[:, 0], reference["output.cls.32x32"]) < 1e-5
    assert max_diff(from_vit_model(vit)(reference["input.32x32"]).pooler_output, reference["output.cls.32x32"]) < 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# Linear probes
# ---------------------------------------------------------------------------------------------------------------------


def test_linear_probe_is_read_from_every_form_it_comes_in(tmp_path):
    torch.manual_seed(0)
    probe = torch.nn.Linear(8, 3)
    weight, bias = probe.weight.detach(), probe.bias.detach()
    reference_file = {"epoch": 100, "state_dict": {"module.linear.weight": weight, "module.linear.bias": bias}}
    torch.save(reference_file, tmp_path / "linearweights.pth")  # what the reference's eval_linear.py saves
    save_file({"linear.weight": weight, "linear.bias": bias}, tmp_path / "probe.safetensors")
    assert read_linear_probe(probe) is probe
    classifier = torch.nn.Module()  # dino_hf's LinearClassifier holds the layer as `.linear`
    classifier.linear = probe
    forms = {
        "reference file": tmp_path / "linearweights.pth",
        "safetensors path": str(tmp_path / "probe.safetensors"),
        "reference state dict": reference_file,
        "plain state dict": {"weight": weight, "bias": bias},
        "classifier module": classifier,
        "probe result": types.SimpleNamespace(classifier=probe),
    }
    for name, form in forms.items():
        generator_state = torch.random.get_rng_state()
        linear = read_linear_probe(form)
        assert torch.equal(torch.random.get_rng_state(), generator_state), name  # no random initialisation
        assert torch.equal(linear.weight, weight) and torch.equal(linear.bias, bias), name


def test_linear_probe_errors():
    with pytest.raises(ValueError, match="No linear-probe weights"):
        read_linear_probe({"state_dict": {"module.fc.weight": torch.zeros(3, 8)}})
    with pytest.raises(ValueError, match="no bias"):
        read_linear_probe(torch.nn.Linear(8, 3, bias=False))
    with pytest.raises(TypeError, match="Cannot read linear-probe weights from a int"):
        read_linear_probe(3)


def test_one_layer_head_converts_both_ways():
    from dino_hf.conversion import head_state_dict_to_reference

    config = DinoConfig.from_preset(
        "vit_tiny", image_size=32, num_hidden_layers=1, out_dim=64, head_bottleneck_dim=16, head_num_layers=1
    )
    source = perturb_(DinoForSelfDistillation(config))

    def reference_network(network):  # the reference's DINOHead(nlayers=1): `mlp` is the Linear itself
        state = {f"backbone.{k}": v for k, v in reference_layout(network.backbone.state_dict()).items()}
        head = {k.replace("mlp.0.", "mlp."): v for k, v in network.head.state_dict().items()}
        assert "mlp.weight" in head and "mlp.bias" in head
        assert head_state_dict_to_reference(network.head.state_dict()).keys() == head.keys()
        return {**state, **{f"head.{k}": v for k, v in head.items()}}

    checkpoint = {
        "student": reference_network(source.student),
        "teacher": reference_network(source.teacher),
        "dino_loss": {"center": source.center.center},
    }
    model = from_official_checkpoint(checkpoint)
    assert model.config.head_num_layers == 1 and model.config.head_bottleneck_dim == 16
    theirs, ours = source.state_dict(), model.state_dict()
    assert sorted(theirs) == sorted(ours) and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    # A three-layer head has the same names in both layouts.
    three = DinoForSelfDistillation(tiny_config()).student.head.state_dict()
    assert head_state_dict_to_reference(three).keys() == three.keys()
