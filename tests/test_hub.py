"""Loading the released DINO models by Hub id and by name from a fake offline Hub cache, and never-silently-random
loads (`from_pretrained` of DinoViTModel / DinoForSelfDistillation, `dino_hf.hub`), and `load_backbone` of any DINO
backbone."""

import logging

import numpy as np
import pytest
import torch
from conftest import small_dino_vit, tiny_config, write_hub_snapshot
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoBackbone, AutoImageProcessor, AutoModel, ResNetBackbone, ViTModel, pipeline

from dino_hf import DinoBackbone, DinoConfig, DinoForSelfDistillation, DinoViTModel, MissingWeightsError
from dino_hf.hub import load_backbone
from dino_hf.releases import released_model


def hub_vit_cls(pixels, layer_norm_eps=1e-6, repo_id="facebook/dino-vits16"):
    """The Hub ViTModel's normalised [CLS] (`last_hidden_state[:, 0]`, after its final LayerNorm)."""
    vit = ViTModel.from_pretrained(repo_id, add_pooling_layer=False, layer_norm_eps=layer_norm_eps).eval()
    with torch.no_grad():
        return vit(pixels).last_hidden_state[:, 0]


@pytest.mark.parametrize("name", ["facebook/dino-vits16", "dino-vits16", "dino_vits16", "dino_deitsmall16"])
def test_hub_id_and_paper_names_load_the_vit_model_as_a_dino_backbone(fake_hub, name):
    pixels = torch.randn(2, 3, 32, 32)
    model = DinoViTModel.from_pretrained(name)
    assert type(model) is DinoViTModel and not model.training
    # DINO's epsilon, not the Hub config's 1e-12, in the config and in every LayerNorm.
    assert model.config.layer_norm_eps == 1e-6 and model.config.architectures == ["DinoViTModel"]
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    with torch.no_grad():
        feature = model(pixels).pooler_output
    assert (feature - hub_vit_cls(pixels, layer_norm_eps=1e-6)).abs().max() < 1e-4
    # Against the Hub model as it is (eps 1e-12) the difference is the epsilon's, small but not zero.
    assert 0 < (feature - hub_vit_cls(pixels, layer_norm_eps=1e-12)).abs().max() < 1e-2


@pytest.mark.parametrize("name", ["dino-vits16", "dino_deitsmall16", "facebook/dino-vits16"])
def test_auto_backbone_takes_the_released_names_as_dino_vit_model_does(fake_hub, name):
    backbone = AutoBackbone.from_pretrained(name, out_indices=[1, 2])
    assert type(backbone) is DinoBackbone and not backbone.training and backbone.out_features == ["stage1", "stage2"]
    assert backbone.config.layer_norm_eps == 1e-6  # DINO's, as DinoViTModel.from_pretrained gives it
    vit = DinoViTModel.from_pretrained(name)
    vit_state = vit.state_dict()
    assert backbone.state_dict().keys() == vit_state.keys()
    assert all(torch.equal(value, vit_state[key]) for key, value in backbone.state_dict().items())
    pixels = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        last = backbone(pixels).feature_maps[-1]
        expected = vit.get_intermediate_layers(pixels, 1)[0]  # block 2 of 2, through the final norm
    torch.testing.assert_close(last, expected[:, 1:].reshape(1, 4, 6, 32).permute(0, 3, 1, 2), rtol=0, atol=1e-6)
    sequences = AutoBackbone.from_pretrained(name, out_features=["stage2"], reshape_hidden_states=False)
    assert sequences.out_indices == [2] and not sequences.config.reshape_hidden_states


def test_load_backbone_and_config_overrides_take_hub_names(fake_hub):
    pixels = torch.randn(1, 3, 32, 32)
    model = load_backbone("dino-vits16", attn_implementation="eager", drop_path_rate=0.1)
    assert model.config._attn_implementation == "eager" and model.config.drop_path_rate == 0.1
    with torch.no_grad():
        assert (model(pixels).pooler_output - hub_vit_cls(pixels)).abs().max() < 1e-4
    with pytest.raises(TypeError, match="does not take"):
        DinoViTModel.from_pretrained("dino-vits16", not_an_argument=1)


def test_a_bin_only_repository_loads_with_weights_only(fake_hub):
    cache, _ = fake_hub
    vit = small_dino_vit(patch_size=4)
    pixels = torch.randn(1, 3, 32, 32)

    def save_bin(folder, extra=None):
        vit.save_pretrained(folder)
        state = load_file(folder / "model.safetensors")  # the Hub's (legacy) key names
        (folder / "model.safetensors").unlink()
        torch.save({**state, **(extra or {})}, folder / "pytorch_model.bin")

    write_hub_snapshot(cache, "facebook/dino-vits8", save_bin)
    model = DinoViTModel.from_pretrained("dino-vits8")
    assert model.config.patch_size == 4
    with torch.no_grad():
        expected = hub_vit_cls(pixels, repo_id="facebook/dino-vits8")
        assert (model(pixels).pooler_output - expected).abs().max() < 1e-4
    # A .bin that pickles anything but tensors is refused (transformers' torch.load(weights_only=True)).
    write_hub_snapshot(cache, "facebook/dino-vitb16", lambda f: save_bin(f, {"code": ValueError("not a tensor")}))
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        DinoViTModel.from_pretrained("dino-vitb16")


def test_image_processor_and_pipeline_work_on_the_id(fake_hub):
    processor = AutoImageProcessor.from_pretrained("facebook/dino-vits16")
    model = DinoViTModel.from_pretrained("dino-vits16")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    extractor = pipeline("image-feature-extraction", model=model, image_processor=processor)
    feature = extractor(image, pool=True, return_tensors=True)
    with torch.no_grad():
        expected = model(**processor(images=image, return_tensors="pt")).pooler_output
    torch.testing.assert_close(feature.reshape(expected.shape), expected)


def test_released_models_without_a_hub_repository_say_where_they_are():
    for name in ("dino_xcit_small_12_p16", "dino-xcit-medium-24-p8"):
        url = released_model(name).backbone_url
        with pytest.raises(ValueError, match=f"no Hub repository.*{url}.*from_official_checkpoint"):
            DinoViTModel.from_pretrained(name)


def test_self_distillation_from_a_backbone_needs_the_opt_in_for_its_new_head(fake_hub, caplog):
    with pytest.raises(MissingWeightsError, match=r"student\.head\.mlp\.0\.weight.*allow_missing_weights=True"):
        DinoForSelfDistillation.from_pretrained("dino-vits16")
    head = dict(out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16)
    with caplog.at_level(logging.WARNING):
        model = DinoForSelfDistillation.from_pretrained("dino-vits16", allow_missing_weights=True, **head)
    assert "random initialisation" in caplog.text and "center.center" in caplog.text
    assert model.config.out_dim == 64 and not any(p.requires_grad for p in model.teacher.parameters())
    backbone = DinoViTModel.from_pretrained("dino-vits16").state_dict()
    for network in (model.student, model.teacher):
        assert all(torch.equal(v, backbone[k]) for k, v in network.backbone.state_dict().items())


def saved_run(folder):
    """A saved DinoForSelfDistillation whose teacher differs from its student (as after training)."""
    model = DinoForSelfDistillation(tiny_config())
    with torch.no_grad():
        for param in model.teacher.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(folder)
    return model, folder


def test_automodel_of_a_training_folder_gives_the_teacher_backbone(tmp_path):
    model, folder = saved_run(tmp_path / "run")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        teacher = model.teacher.backbone.eval()(pixels).pooler_output
        student = model.student.backbone.eval()(pixels).pooler_output
        for loaded in (AutoModel.from_pretrained(folder), DinoViTModel.from_pretrained(folder), load_backbone(folder)):
            assert type(loaded) is DinoViTModel and loaded.config.architectures == ["DinoViTModel"]
            features = loaded.eval()(pixels).pooler_output
            torch.testing.assert_close(features, teacher, rtol=0, atol=0)
            assert (features - student).abs().max() > 1e-3


def remove_tensors(folder, names):
    state = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in state.items() if k not in names}, folder / "model.safetensors", {"format": "pt"})


def test_a_load_that_leaves_weights_random_raises_unless_allowed(tmp_path, caplog):
    backbone = DinoViTModel(tiny_config())
    backbone.save_pretrained(tmp_path / "backbone")
    remove_tensors(tmp_path / "backbone", {"encoder.layer.1.mlp.fc1.weight"})
    with pytest.raises(MissingWeightsError, match=r"1 tensors.*encoder\.layer\.1\.mlp\.fc1\.weight"):
        DinoViTModel.from_pretrained(tmp_path / "backbone")
    with caplog.at_level(logging.WARNING):
        DinoViTModel.from_pretrained(tmp_path / "backbone", allow_missing_weights=True)
    assert "encoder.layer.1.mlp.fc1.weight" in caplog.text and "allow_missing_weights=True" in caplog.text

    _, run = saved_run(tmp_path / "run")
    remove_tensors(run, {"student.head.last_layer.weight_v", "center.center"})
    with pytest.raises(MissingWeightsError, match=r"center\.center.*student\.head\.last_layer\.weight_v"):
        DinoForSelfDistillation.from_pretrained(run)
    with pytest.raises(MissingWeightsError):  # the same check through AutoModel (teacher backbone of that run)
        AutoModel.from_pretrained(run)
    # A shape mismatch re-initialises the tensor: just as random.
    _, complete = saved_run(tmp_path / "complete")
    with pytest.raises(MissingWeightsError, match=r"student\.head\.mlp\.0\.weight"):
        DinoForSelfDistillation.from_pretrained(complete, head_hidden_dim=96, ignore_mismatched_sizes=True)


def test_dino_resnet50_loads_from_its_official_files(tmp_path, monkeypatch):
    from test_resnet import full_checkpoint, torchvision_resnet_state
    from transformers import ResNetModel

    import dino_hf.conversion

    files = {"dino_resnet50_pretrain.pth": torchvision_resnet_state(0), "full.pth": full_checkpoint()}
    for name, content in files.items():
        torch.save(content, tmp_path / name)
    downloads = []

    def fake_download(url):
        downloads.append(url)
        return tmp_path / ("full.pth" if url.endswith("full_checkpoint.pth") else "dino_resnet50_pretrain.pth")

    monkeypatch.setattr(dino_hf.conversion, "download_checkpoint", fake_download)
    with pytest.raises(ValueError, match=r"ResNet-50.*not a DinoViTModel.*load_backbone\('dino_resnet50'\)"):
        DinoViTModel.from_pretrained("dino_resnet50")
    assert downloads == []  # refused before downloading
    backbone = load_backbone("dino_resnet50")
    assert isinstance(backbone, ResNetModel) and downloads == [released_model("dino-resnet50").backbone_url]
    run = DinoForSelfDistillation.from_pretrained("dino-resnet50")
    assert run.config.backbone == "resnet" and downloads[-1].endswith("dino_resnet50_pretrain_full_checkpoint.pth")
    # AutoBackbone: transformers' own ResNetBackbone with the released weights; DinoBackbone refuses before downloading.
    with pytest.raises(ValueError, match="ResNet.*AutoBackbone.from_pretrained gives transformers' ResNetBackbone"):
        DinoBackbone.from_pretrained("dino-resnet50")
    dense = AutoBackbone.from_pretrained("dino-resnet50", out_indices=[2, 4])
    assert type(dense) is ResNetBackbone and not dense.training
    assert dense.channels == [backbone.config.hidden_sizes[1], backbone.config.hidden_sizes[3]]
    assert all(torch.equal(value, backbone.state_dict()[key]) for key, value in dense.state_dict().items())


def test_a_resnet_is_no_dino_vit_model_and_load_backbone_reads_it(tmp_path):
    from transformers import ResNetModel

    resnet = dict(resnet_embedding_size=8, resnet_hidden_sizes=[8, 16], resnet_depths=[1, 1], out_dim=16)
    run = DinoForSelfDistillation(DinoConfig(backbone="resnet", **resnet))
    with torch.no_grad():
        for param in run.teacher.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    run.save_pretrained(tmp_path / "run")
    run.export_teacher_backbone().save_pretrained(tmp_path / "export")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = run.teacher.backbone.eval()(pixels).pooler_output
        for folder, auto_model in (("export", "AutoModel.from_pretrained"), ("run", "")):
            with pytest.raises(ValueError, match=f"not a DinoViTModel.*{auto_model}.*load_backbone"):
                DinoViTModel.from_pretrained(tmp_path / folder)
            backbone = load_backbone(tmp_path / folder)
            assert type(backbone) is ResNetModel and not backbone.training
            torch.testing.assert_close(backbone(pixels).pooler_output, expected, rtol=0, atol=0)
    assert type(AutoModel.from_pretrained(tmp_path / "export")) is ResNetModel


def test_the_loader_of_other_layouts_is_registered_by_the_package_not_found_by_the_modeling_file(fake_hub):
    from dino_hf import DinoPreTrainedModel
    from dino_hf.hub import load_foreign_pretrained

    assert DinoPreTrainedModel._foreign_loader is load_foreign_pretrained
    DinoPreTrainedModel.register_foreign_loader(None)
    try:  # the modeling file alone (a saved folder's remote code) reads its own layout only
        with pytest.raises(OSError):
            DinoViTModel.from_pretrained("dino-vits16")
    finally:
        DinoPreTrainedModel.register_foreign_loader(load_foreign_pretrained)
    assert type(DinoViTModel.from_pretrained("dino-vits16")) is DinoViTModel


def test_loading_info_of_a_new_head_names_its_tensors(fake_hub):
    head = dict(out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16)
    model, info = DinoForSelfDistillation.from_pretrained(
        "dino-vits16", allow_missing_weights=True, output_loading_info=True, **head
    )
    assert "center.center" in info["missing_keys"] and "teacher.head.last_layer.weight_v" in info["missing_keys"]
    assert not any(name.startswith(("student.backbone.", "teacher.backbone.")) for name in info["missing_keys"])
