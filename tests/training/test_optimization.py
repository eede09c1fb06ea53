"""Parameter groups, clipping and the frozen last layer, each against its definition."""

import torch
from conftest import tiny_config
from torch import nn

from dino_hf import DinoForSelfDistillation
from dino_hf.training.optimization import (
    cancel_last_layer_gradients,
    clip_gradients_global,
    clip_gradients_per_parameter,
    create_optimizer,
    parameter_groups,
    set_optimizer_values,
)


def test_no_weight_decay_for_biases_and_1d_parameters():
    model = DinoForSelfDistillation(tiny_config())
    regularized, not_regularized = parameter_groups(model.student)
    names = {id(p): n for n, p in model.student.named_parameters()}
    reg_names = {names[id(p)] for p in regularized["params"]}
    not_reg_names = {names[id(p)] for p in not_regularized["params"]}
    assert not_regularized["weight_decay"] == 0.0
    assert all(n.endswith(".bias") or model.student.get_parameter(n).ndim == 1 for n in not_reg_names)
    assert "backbone.encoder.layer.0.norm1.weight" in not_reg_names
    assert "backbone.embeddings.cls_token" in reg_names and "backbone.embeddings.position_embeddings" in reg_names
    assert "head.last_layer.weight_v" in reg_names
    assert reg_names.isdisjoint(not_reg_names)
    assert len(reg_names) + len(not_reg_names) == sum(1 for p in model.student.parameters() if p.requires_grad)


def test_scheduled_values_reach_the_optimizer():
    model = DinoForSelfDistillation(tiny_config())
    optimizer = create_optimizer(model.student, lr=1.0, weight_decay=0.5)
    set_optimizer_values(optimizer, lr=0.25, weight_decay=0.3)
    assert [g["lr"] for g in optimizer.param_groups] == [0.25, 0.25]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.3, 0.0]


def _params_with_grads(norms):
    params = []
    for norm in norms:
        p = nn.Parameter(torch.zeros(4))
        p.grad = torch.full((4,), norm / 2.0)  # ||grad|| = norm
        params.append(p)
    return params


def test_per_parameter_clipping_is_the_reference_formula():
    params = _params_with_grads([0.5, 3.0, 10.0])
    before = [p.grad.clone() for p in params]
    total = clip_gradients_per_parameter(params, max_norm=3.0)
    torch.testing.assert_close(total, torch.tensor((0.25 + 9 + 100) ** 0.5))
    for p, g in zip(params, before):
        norm = g.norm()
        coef = 3.0 / (norm + 1e-6)
        expected = g * coef if coef < 1 else g
        torch.testing.assert_close(p.grad, expected)


def test_global_clipping_matches_torch():
    params = _params_with_grads([0.5, 3.0, 10.0])
    copies = _params_with_grads([0.5, 3.0, 10.0])
    total = clip_gradients_global(params, max_norm=3.0)
    expected_total = torch.nn.utils.clip_grad_norm_(copies, 3.0)
    torch.testing.assert_close(total, expected_total)
    for a, b in zip(params, copies):
        torch.testing.assert_close(a.grad, b.grad)


def test_frozen_last_layer_is_not_updated():
    model = DinoForSelfDistillation(tiny_config())
    optimizer = create_optimizer(model.student, lr=1e-2, weight_decay=0.04)
    out = model.train()(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 16, 16))
    out.loss.backward()
    before = model.student.head.last_layer.weight_v.detach().clone()
    other = model.student.head.mlp[0].weight.detach().clone()
    cancel_last_layer_gradients(model.student)
    optimizer.step()
    assert torch.equal(model.student.head.last_layer.weight_v, before)
    assert not torch.equal(model.student.head.mlp[0].weight, other)
