"""The release table: names, Hub ids and official files of the DINO model zoo (`dino_hf.releases`)."""

from dino_hf.releases import RELEASED_MODELS, release_from_official_files, released_model, resolve_model_id


def test_released_names_resolve_to_hub_ids(tmp_path, monkeypatch):
    assert resolve_model_id("dino-vitb8") == "facebook/dino-vitb8"
    assert resolve_model_id("dino_vits8") == resolve_model_id("dino_deits8") == "facebook/dino-vits8"
    assert resolve_model_id("DINO_VITBASE16") == "facebook/dino-vitb16"
    assert resolve_model_id("someone/model") == "someone/model"
    assert {m.hub_id for m in RELEASED_MODELS.values()} - {None} == {
        f"facebook/dino-vit{a}" for a in ["s16", "s8", "b16", "b8"]
    }
    # A local folder of that name comes first.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dino-vits16").mkdir()
    assert resolve_model_id("dino-vits16") == "dino-vits16" and released_model("dino-vits16") is None


def test_only_resnet50_loads_from_its_official_files():
    assert [m.name for m in RELEASED_MODELS.values() if m.loads_from_official_files] == ["dino-resnet50"]
    release = release_from_official_files("dino_resnet50")
    assert release is released_model("dino-resnet50") and resolve_model_id("dino_resnet50") == "dino_resnet50"
    assert (
        release.backbone_url == "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth"
    )
    assert release_from_official_files("dino-vits16") is None and release_from_official_files("someone/model") is None
    assert not released_model("dino-xcit-small-12-p8").implemented
