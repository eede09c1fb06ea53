"""`dino-hf-convert` (`dino_hf.cli.convert`): official, timm and Hub weights to dino_hf folders, and back to ViTModel."""

import pytest
import torch
from conftest import tiny_config
from transformers import ResNetModel, ViTModel

from dino_hf import DinoViTModel
from dino_hf.cli.convert import main, run


def test_official_backbone_to_a_folder_and_back_to_vit_model(reference, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "{official,timm,vit,to-vit}" in capsys.readouterr().out

    backbone = {k.removeprefix("backbone."): v for k, v in reference.items() if k.startswith("backbone.")}
    torch.save(backbone, tmp_path / "backbone.pth")
    tiny_config().save_pretrained(tmp_path / "config")
    main(["official", str(tmp_path / "backbone.pth"), str(tmp_path / "dino"), "--config", str(tmp_path / "config")])
    assert (tmp_path / "dino" / "model.safetensors").exists()
    assert (tmp_path / "dino" / "preprocessor_config.json").exists()
    loaded = DinoViTModel.from_pretrained(tmp_path / "dino").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(reference["input.32x32"]).pooler_output, reference["output.cls.32x32"], atol=1e-5, rtol=0
        )

    main(["to-vit", str(tmp_path / "dino"), str(tmp_path / "vit")])
    vit = ViTModel.from_pretrained(tmp_path / "vit", add_pooling_layer=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            vit(reference["input.32x32"]).last_hidden_state[:, 0], reference["output.cls.32x32"], atol=1e-5, rtol=0
        )
    assert "Saved ViTModel (hidden 64, 2 layers, 4 heads" in capsys.readouterr().out


def test_official_resnet_backbone(tmp_path, capsys):
    from test_resnet import torchvision_resnet_state

    torch.save(torchvision_resnet_state(3), tmp_path / "resnet.pth")
    model = run(["official", str(tmp_path / "resnet.pth"), str(tmp_path / "resnet")])
    assert type(model) is ResNetModel and type(ResNetModel.from_pretrained(tmp_path / "resnet")) is ResNetModel
    assert "Saved ResNetModel (ResNet, stage widths" in capsys.readouterr().out
