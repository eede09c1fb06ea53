"""The harness's measurement helpers: the FLOP count of a step against the reference figure, the compile regions."""

import pytest
import torch
from step_measurement import COMPILE_REGIONS, compile_model, count_step_flops, parse_compile_regions
from torch.utils.flop_counter import FlopCounterMode

from dino_hf import DinoConfig, DinoForSelfDistillation
from dino_hf.testing_utils import tiny_config


def _full_path_step_flops(model, global_crops, local_crops):
    """FLOPs of the step as the reference computes it: every backbone to its full output, then the heads and loss."""
    counter = FlopCounterMode(display=False)
    with counter:
        with torch.no_grad():
            teacher = model.teacher.head(model.teacher.backbone(global_crops).pooler_output)
        features = [model.student.backbone(crops).pooler_output for crops in (global_crops, local_crops)]
        student = model.student.head(torch.cat(features))
        model.loss_fn(student, teacher, model.center.center, 0.04).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def test_flop_count_of_vits16_matches_the_reference_figure():
    """The anchor (123.8 GFLOP per image for ViT-S/16, 2x224 + 10x96) is the full computation with the input gradient
    of the patch convolution; the step computes neither that gradient (the crops need none) nor the last block and
    final LayerNorm for tokens other than [CLS]."""
    config = DinoConfig.from_preset("vit_small", patch_size=16)
    with torch.device("meta"):
        model = DinoForSelfDistillation(config).train()
        global_crops, local_crops = torch.empty(2, 3, 224, 224), torch.empty(10, 3, 96, 96)
    executed = count_step_flops(model, global_crops, local_crops) / 1e9
    global_crops.requires_grad_(True)
    local_crops.requires_grad_(True)
    reference = _full_path_step_flops(model, global_crops, local_crops) / 1e9
    assert reference == pytest.approx(123.8, abs=0.05)
    patch_conv_input_grad = (2 * 2 * 196 + 10 * 2 * 36) * 768 * 384 / 1e9  # 2 FLOPs per multiply-add, per patch
    assert 0.05 < 1 - executed / (reference - patch_conv_input_grad) < 0.08  # the [CLS]-only last block


def test_compile_regions_are_parsed_and_checked():
    assert parse_compile_regions("none") == ()
    assert parse_compile_regions("all") == COMPILE_REGIONS
    assert parse_compile_regions("blocks, loss") == ("blocks", "loss")
    with pytest.raises(ValueError, match="Unknown compile regions"):
        parse_compile_regions("blocks,backbone")
    with pytest.raises(ValueError, match="Unknown compile regions"):
        compile_model(DinoForSelfDistillation(tiny_config()), ("backbone",))
