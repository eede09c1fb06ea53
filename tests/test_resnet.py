"""ResNet backbone: the reference's `MultiCropWrapper(resnet50 with fc removed, DINOHead)` step on a tiny ResNet, with
the reference computations written out here on a torchvision-layout state dict (torch.nn.functional only), and the
torchvision <-> transformers conversion both ways."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import ResNetModel

from dino_hf import DinoConfig, DinoForSelfDistillation
from dino_hf.conversion import (
    convert_torchvision_resnet_state_dict,
    from_official_checkpoint,
    infer_resnet_config_fields,
    resnet_state_dict_to_torchvision,
)


WIDTHS, DEPTHS, STEM = (16, 32, 48, 64), (2, 1, 1, 1), 8
HEAD = dict(out_dim=40, head_hidden_dim=24, head_bottleneck_dim=12)


def _bn(state, name, width, generator):
    state[f"{name}.weight"] = 1 + 0.2 * torch.randn(width, generator=generator)
    state[f"{name}.bias"] = 0.2 * torch.randn(width, generator=generator)
    state[f"{name}.running_mean"] = 0.1 * torch.randn(width, generator=generator)
    state[f"{name}.running_var"] = 0.5 + torch.rand(width, generator=generator)
    state[f"{name}.num_batches_tracked"] = torch.tensor(3)


def torchvision_resnet_state(seed: int, widths=WIDTHS, depths=DEPTHS, stem=STEM) -> dict[str, torch.Tensor]:
    """A random bottleneck ResNet in torchvision's layout (what `resnet50().state_dict()` holds, `fc` removed)."""
    g = torch.Generator().manual_seed(seed)
    state = {"conv1.weight": torch.randn(stem, 3, 7, 7, generator=g) * (2 / (49 * 3)) ** 0.5}
    _bn(state, "bn1", stem, g)
    in_ch = stem
    for stage, (width, depth) in enumerate(zip(widths, depths), start=1):
        mid = width // 4
        for block in range(depth):
            p = f"layer{stage}.{block}"
            for conv, shape in (("1", (mid, in_ch, 1, 1)), ("2", (mid, mid, 3, 3)), ("3", (width, mid, 1, 1))):
                fan_in = shape[1] * shape[2] * shape[3]
                state[f"{p}.conv{conv}.weight"] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
                _bn(state, f"{p}.bn{conv}", shape[0], g)
            if block == 0:
                state[f"{p}.downsample.0.weight"] = torch.randn(width, in_ch, 1, 1, generator=g) * (2 / in_ch) ** 0.5
                _bn(state, f"{p}.downsample.1", width, g)
            in_ch = width
    return state


def torchvision_forward(state, x, training):
    """torchvision's ResNet (v1.5: stride on the 3x3 conv) with `fc = nn.Identity()`: the pooled feature."""

    def bn(h, name):
        return F.batch_norm(
            h, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
            state[f"{name}.bias"], training, 0.1, 1e-5,
        )  # fmt: skip

    h = F.max_pool2d(F.relu(bn(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    stage = 1
    while f"layer{stage}.0.conv1.weight" in state:
        block = 0
        while f"layer{stage}.{block}.conv1.weight" in state:
            p, stride = f"layer{stage}.{block}", 2 if stage > 1 and block == 0 else 1
            out = F.relu(bn(F.conv2d(h, state[f"{p}.conv1.weight"]), f"{p}.bn1"))
            out = F.relu(bn(F.conv2d(out, state[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn2"))
            out = bn(F.conv2d(out, state[f"{p}.conv3.weight"]), f"{p}.bn3")
            if f"{p}.downsample.0.weight" in state:
                h = bn(F.conv2d(h, state[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            h = F.relu(out + h)
            block += 1
        stage += 1
    return F.adaptive_avg_pool2d(h, 1).flatten(1)


def reference_head_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dims = [WIDTHS[-1], HEAD["head_hidden_dim"], HEAD["head_hidden_dim"], HEAD["head_bottleneck_dim"]]
    state = {}
    for index, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        state[f"mlp.{2 * index}.weight"] = 0.1 * torch.randn(n_out, n_in, generator=g)
        state[f"mlp.{2 * index}.bias"] = 0.1 * torch.randn(n_out, generator=g)
    state["last_layer.weight_g"] = torch.ones(HEAD["out_dim"], 1)
    state["last_layer.weight_v"] = torch.randn(HEAD["out_dim"], dims[-1], generator=g)
    return state


def reference_multicrop(backbone, head, crops, training):
    """`MultiCropWrapper.forward`: one backbone pass per run of equal resolutions, then `DINOHead` on all."""
    features = torch.cat([torchvision_forward(backbone, torch.cat(group), training) for group in crops])
    hidden = F.linear(F.gelu(F.linear(F.gelu(F.linear(features, head["mlp.0.weight"], head["mlp.0.bias"])),
                                      head["mlp.2.weight"], head["mlp.2.bias"])), head["mlp.4.weight"], head["mlp.4.bias"])  # fmt: skip
    v = head["last_layer.weight_v"]
    weight = head["last_layer.weight_g"] * v / v.norm(dim=1, keepdim=True)
    return F.linear(F.normalize(hidden, dim=-1, p=2), weight)


def reference_dino_loss(student_out, teacher_out, center, ncrops, teacher_temp=0.04, student_temp=0.1):
    """`DINOLoss.forward` and `update_center` (one process)."""
    student = (student_out / student_temp).chunk(ncrops)
    teacher = F.softmax((teacher_out - center) / teacher_temp, dim=-1).detach().chunk(2)
    total, terms = 0, 0
    for iq, q in enumerate(teacher):
        for v in range(len(student)):
            if v != iq:
                total += torch.sum(-q * F.log_softmax(student[v], dim=-1), dim=-1).mean()
                terms += 1
    new_center = center * 0.9 + teacher_out.sum(dim=0, keepdim=True) / len(teacher_out) * 0.1
    return total / terms, new_center


def full_checkpoint():
    """A reference training checkpoint: student and teacher (`module.backbone.*`, `module.head.*`) and the center."""
    student = {**torchvision_resnet_state(0), **{f"head.{k}": v for k, v in reference_head_state(1).items()}}
    teacher = {**torchvision_resnet_state(2), **{f"head.{k}": v for k, v in reference_head_state(3).items()}}
    return {
        "student": {f"module.{'' if k.startswith('head.') else 'backbone.'}{k}": v for k, v in student.items()},
        "teacher": {("" if k.startswith("head.") else "backbone.") + k: v for k, v in teacher.items()},
        "dino_loss": {"center": 0.1 * torch.randn(1, HEAD["out_dim"], generator=torch.Generator().manual_seed(4))},
        "epoch": 3,
    }


def _split(network):
    backbone = {k.removeprefix("module.").removeprefix("backbone."): v.clone() for k, v in network.items()}
    head = {k[len("head.") :]: backbone.pop(k) for k in list(backbone) if k.startswith("head.")}
    return backbone, head


def test_resnet_step_matches_reference_multicrop_wrapper():
    checkpoint = full_checkpoint()
    model = from_official_checkpoint(checkpoint).train()
    assert model.config.backbone == "resnet" and model.config.resnet_depths == list(DEPTHS)
    g = torch.Generator().manual_seed(5)
    batch = 3
    global_crops = [torch.randn(batch, 3, 32, 32, generator=g) for _ in range(2)]
    local_crops = [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(3)]

    out = model(torch.cat(global_crops), torch.cat(local_crops), teacher_temp=0.04)
    out.loss.backward()
    grad_norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in model.student.parameters() if p.grad is not None])
    )

    student_bb, student_head = _split(checkpoint["student"])
    teacher_bb, teacher_head = _split(checkpoint["teacher"])
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    trainable = [v for k, v in student_bb.items() if not k.endswith(buffers)]
    trainable += [v for k, v in student_head.items() if k != "last_layer.weight_g"]
    for tensor in trainable:
        tensor.requires_grad_(True)
    with torch.no_grad():
        teacher_out = reference_multicrop(teacher_bb, teacher_head, [global_crops], training=True)
    student_out = reference_multicrop(student_bb, student_head, [global_crops, local_crops], training=True)
    loss, center = reference_dino_loss(student_out, teacher_out, checkpoint["dino_loss"]["center"], ncrops=5)
    loss.backward()
    ref_grad_norm = torch.linalg.vector_norm(torch.stack([t.grad.norm() for t in trainable]))

    torch.testing.assert_close(out.teacher_logits, teacher_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.student_logits, student_out.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, loss.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.center.center, center, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_norm, ref_grad_norm, atol=1e-5, rtol=0)
    # BatchNorm: both networks in train mode update their own running statistics, per resolution group.
    ours = resnet_state_dict_to_torchvision(model.teacher.backbone.state_dict())
    for name in ("bn1.running_mean", "layer4.0.bn3.running_var", "layer1.0.downsample.1.running_mean"):
        torch.testing.assert_close(ours[name], teacher_bb[name], atol=1e-5, rtol=0)
    student_ours = resnet_state_dict_to_torchvision(model.student.backbone.state_dict())
    name = "layer2.0.bn2.running_var"
    torch.testing.assert_close(student_ours[name], student_bb[name], atol=1e-5, rtol=0)

    # EMA over parameters only: the teacher's BatchNorm buffers stay its own (reference main_dino.py).
    student_params = copy.deepcopy(student_ours)
    model.update_teacher(0.9)
    after = resnet_state_dict_to_torchvision(model.teacher.backbone.state_dict())
    expected = 0.9 * teacher_bb["layer3.0.conv2.weight"] + 0.1 * student_params["layer3.0.conv2.weight"]
    torch.testing.assert_close(after["layer3.0.conv2.weight"], expected, atol=1e-6, rtol=0)
    assert torch.equal(after["layer3.0.bn2.running_mean"], ours["layer3.0.bn2.running_mean"])


def test_released_backbone_layout_converts_both_ways_with_equal_features():
    state = torchvision_resnet_state(7)
    model = from_official_checkpoint({f"module.{k}": v for k, v in state.items()})
    assert isinstance(model, ResNetModel) and not model.training
    assert infer_resnet_config_fields(state)["resnet_hidden_sizes"] == list(WIDTHS)
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        feature = model(x).pooler_output.flatten(1)
    torch.testing.assert_close(feature, torchvision_forward(state, x, training=False), atol=1e-5, rtol=0)
    back = resnet_state_dict_to_torchvision(model.state_dict())
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert (
        convert_torchvision_resnet_state_dict({**state, "fc.weight": torch.zeros(1)}).keys()
        == model.state_dict().keys()
    )
    with pytest.raises(ValueError, match="torchvision's ResNet layout"):
        convert_torchvision_resnet_state_dict({**state, "layer9.stray": torch.zeros(1)})


def test_resnet50_preset_is_torchvision_resnet50():
    config = DinoConfig.from_preset("resnet50", out_dim=16, head_hidden_dim=8, head_bottleneck_dim=8)
    model = DinoForSelfDistillation(config)
    backbone = model.student.backbone
    assert sum(p.numel() for p in backbone.parameters()) == 23_508_032  # torchvision resnet50 without fc
    assert backbone.config.downsample_in_bottleneck is False and model.student.head.mlp[0].in_features == 2048
    stage = backbone.encoder.stages[1].layers[0]
    assert stage.layer[1].convolution.stride == (2, 2) and stage.layer[0].convolution.stride == (1, 1)


def test_resnet_export_features_for_knn_linear_and_the_pipeline(tmp_path):
    from transformers import pipeline

    from dino_hf.evaluation import extract_features, load_backbone, save_model_with_processor
    from dino_hf.evaluation.linear import LinearProbeConfig, extract_linear_features

    state = torchvision_resnet_state(9)
    folder = save_model_with_processor(from_official_checkpoint(state), tmp_path / "rn", _processor(32))
    model = load_backbone(folder)
    assert isinstance(model, ResNetModel)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    expected = torchvision_forward(state, x, training=False)
    out = extract_features(model, [(x, torch.tensor([0, 1, 0, 1]))], progress=False)
    torch.testing.assert_close(out["features"], expected, atol=1e-5, rtol=0)
    assert LinearProbeConfig.for_backbone(model.config).feature_dim(WIDTHS[-1]) == WIDTHS[-1]
    with pytest.raises(ValueError, match="pooled last stage"):
        extract_linear_features(model, x, n_last_blocks=4)
    image = (torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(11)) * 255).to(torch.uint8).numpy()
    from PIL import Image

    feature = pipeline("image-feature-extraction", model=str(folder))(
        Image.fromarray(image), pool=True, return_tensors=True
    )
    assert feature.flatten(1).shape == (1, WIDTHS[-1])


def _processor(size):
    from dino_hf.evaluation import dino_image_processor

    return dino_image_processor(image_size=size)


def test_pretraining_starts_from_the_released_resnet50_backbone(tmp_path, monkeypatch):
    import dino_hf.conversion
    from dino_hf.training import DinoDataArguments, DinoModelArguments
    from dino_hf.training.initialization import initial_model
    from dino_hf.training.trainer import build_model_config

    state = torchvision_resnet_state(12)
    torch.save(state, tmp_path / "backbone.pth")
    monkeypatch.setattr(dino_hf.conversion, "download_checkpoint", lambda url: tmp_path / "backbone.pth")
    model_args = DinoModelArguments(
        arch="resnet50", model_name_or_path="dino_resnet50", out_dim=HEAD["out_dim"],
        config_overrides="resnet_embedding_size=8,resnet_hidden_sizes=[16,32,48,64],resnet_depths=[2,1,1,1]",
    )  # fmt: skip
    start = initial_model(model_args, build_model_config(model_args, DinoDataArguments(global_crops_size=32)))
    assert start.kind == "backbone" and start.model_args.arch == "custom"
    ours = resnet_state_dict_to_torchvision(start.model.teacher.backbone.state_dict())
    assert all(torch.equal(ours[k], state[k]) for k in state)
    wrong = DinoModelArguments(arch="resnet50", model_name_or_path="dino_resnet50")  # ResNet-50 widths
    with pytest.raises(ValueError, match="resnet_hidden_sizes"):
        initial_model(wrong, build_model_config(wrong, DinoDataArguments()))


def test_regional_compilation_covers_the_resnet_blocks():
    from dino_hf.training.compilation import compile_blocks

    config = DinoConfig.from_preset(
        "resnet50", resnet_embedding_size=8, resnet_hidden_sizes=[16, 32], resnet_depths=[1, 1], **HEAD
    )
    model = DinoForSelfDistillation(config).train()
    assert compile_blocks(model, backend="eager") == 4  # 2 blocks x student and teacher
    out = model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16), teacher_temp=0.04)
    assert torch.isfinite(out.loss)


def test_resnet_step_under_bf16_autocast_keeps_the_loss_path_float32():
    # The backbone and the head's MLP run in bf16 by design; from the head's last layer on everything is float32:
    # compared with the float32 loss and center computed from the same logits.
    from dino_hf import DinoLoss

    model = from_official_checkpoint(full_checkpoint()).train()
    center_before = model.center.center.clone()
    g = torch.Generator().manual_seed(13)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(6, 3, 32, 32, generator=g), torch.randn(6, 3, 16, 16, generator=g), teacher_temp=0.04)
    assert out.loss.dtype == out.student_logits.dtype == model.center.center.dtype == torch.float32
    expected = DinoLoss(0.1)(out.student_logits.detach(), out.teacher_logits, center_before, 0.04)
    torch.testing.assert_close(out.loss.detach(), expected.loss, atol=1e-5, rtol=0)
    expected_center = 0.9 * center_before + 0.1 * out.teacher_logits.mean(0, keepdim=True)
    torch.testing.assert_close(model.center.center, expected_center, atol=1e-6, rtol=0)
    out.loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.student.parameters() if p.grad is not None)


def test_image_classifier_on_a_resnet_reads_the_pooled_feature(tmp_path):
    from dino_hf import DinoForImageClassification

    state = torchvision_resnet_state(14)
    probe = torch.nn.Linear(WIDTHS[-1], 3)
    model = DinoForImageClassification.from_linear_probe(from_official_checkpoint(state), probe)
    assert model.config.backbone == "resnet" and model.config.linear_feature_dim == WIDTHS[-1]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        expected = probe(torchvision_forward(state, x, training=False))
        torch.testing.assert_close(model(x).logits, expected, atol=1e-5, rtol=0)
        model.save_pretrained(tmp_path / "clf")
        loaded = DinoForImageClassification.from_pretrained(tmp_path / "clf").eval()
        torch.testing.assert_close(loaded(x).logits, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="pooled last stage"):
        DinoConfig(backbone="resnet", n_last_blocks=4)
