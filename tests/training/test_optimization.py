"""Parameter groups, clipping and the frozen last layer, each against its definition."""

import pytest
import torch
from torch import nn

from dino_hf import DinoForSelfDistillation
from dino_hf.testing_utils import tiny_config
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


def test_lars_update_matches_its_definition():
    from dino_hf.training.optimization import LARS

    g = torch.Generator().manual_seed(0)
    weight, bias = torch.nn.Parameter(torch.randn(4, 3, generator=g)), torch.nn.Parameter(torch.randn(4, generator=g))
    optimizer = LARS([{"params": [weight], "weight_decay": 0.1}, {"params": [bias], "weight_decay": 0.0}], lr=0.5)
    w0, b0, mu_w, mu_b = weight.detach().clone(), bias.detach().clone(), torch.zeros(4, 3), torch.zeros(4)
    for _ in range(2):
        gw, gb = torch.randn(4, 3, generator=g), torch.randn(4, generator=g)
        weight.grad, bias.grad = gw.clone(), gb.clone()
        optimizer.step()
        d = gw + 0.1 * w0
        mu_w = 0.9 * mu_w + (0.001 * w0.norm() / d.norm()) * d  # trust ratio eta * ||p|| / ||g + wd p||
        mu_b = 0.9 * mu_b + gb  # 1-D: no weight decay, no adaptation
        w0, b0 = w0 - 0.5 * mu_w, b0 - 0.5 * mu_b
        torch.testing.assert_close(weight.detach(), w0)
        torch.testing.assert_close(bias.detach(), b0)
    # ||p|| = 0 (or a zero update): the ratio is 1, the step is the plain gradient.
    zero = torch.nn.Parameter(torch.zeros(2, 2))
    zero.grad = torch.ones(2, 2)
    LARS([zero], lr=0.5, weight_decay=0.1).step()
    torch.testing.assert_close(zero.detach(), torch.full((2, 2), -0.5))


def test_create_optimizer_choices():
    from dino_hf.training.optimization import LARS, create_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    sgd = create_optimizer(model, lr=0.03, weight_decay=1e-4, optimizer="sgd")
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    assert [g["weight_decay"] for g in sgd.param_groups] == [1e-4, 0.0]
    assert isinstance(create_optimizer(model, lr=0.1, weight_decay=0.0, optimizer="lars"), LARS)
    with pytest.raises(ValueError, match="Unknown optimizer"):
        create_optimizer(model, lr=0.1, weight_decay=0.0, optimizer="adam")
