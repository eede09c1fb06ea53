"""Optimizer, gradient clipping and the frozen last layer, as the paper trains DINO.

Everything here avoids host synchronisation: norms and clip coefficients stay on the device.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def parameter_groups(model: nn.Module) -> list[dict]:
    """Two AdamW groups: weights that get weight decay, and biases and 1-D parameters (norms) that do not.

    The split is the reference's (`utils.get_params_groups`): a name ending in `.bias` or a 1-D tensor is not
    regularised. The first group is the regularised one; the training loop sets its weight decay every step.
    """
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or param.ndim == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


OPTIMIZERS = ("adamw", "sgd", "lars")


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum, as the reference's `utils.LARS` (for convnets and large batches).

    For a parameter `p` with gradient `g` (1-D parameters, i.e. biases and norm weights, skip both the weight decay
    and the adaptation): `d = g + weight_decay * p`; `q = eta * ||p|| / ||d||` when both norms are positive, else 1;
    `mu <- momentum * mu + q * d`; `p <- p - lr * mu`. No host synchronisation (`torch.where` on the device).

    Example:

    ```python
    >>> import torch
    >>> from dino_hf.training.optimization import LARS
    >>> weight = torch.nn.Parameter(torch.ones(2, 2))
    >>> weight.grad = torch.full((2, 2), 0.5)
    >>> LARS([weight], lr=0.1, eta=0.001).step()
    >>> round(weight.detach()[0, 0].item(), 6)  # 1 - 0.1 * (0.001 * ||p|| / ||d||) * 0.5 = 1 - 0.1 * 0.002 * 0.5
    0.9999
    ```
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if param.ndim != 1:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.norm(param), torch.norm(update)
                    one = torch.ones_like(param_norm)
                    ratio = torch.where(update_norm > 0, group["eta"] * param_norm / update_norm, one)
                    update = update.mul(torch.where(param_norm > 0.0, ratio, one))
                state = self.state[param]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(param)
                state["mu"].mul_(group["momentum"]).add_(update)
                param.add_(state["mu"], alpha=-group["lr"])
        return loss


def create_optimizer(
    model: nn.Module, lr: float, weight_decay: float, fused: bool | None = None, optimizer: str = "adamw"
) -> torch.optim.Optimizer:
    """The reference's optimizers over `parameter_groups(model)`: AdamW (ViTs), SGD with momentum 0.9 (the ResNet-50
    recipe) or [`LARS`] (convnets with large batches).

    AdamW and SGD use fused kernels by default on CUDA and on the CPU (`fused=None`): one launch for all parameters, the
    step counters on the device (the foreach implementation reads them on the host every step, a synchronisation on a
    GPU), and on the CPU 6x faster than foreach for ViT-S (36 vs 228 ms per step, 1 thread, `docs/performance.md`).
    Foreach on other devices.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}.")
    groups = parameter_groups(model)
    groups[0]["weight_decay"] = weight_decay
    if optimizer == "lars":
        return LARS(groups, lr=lr)
    if fused is None:
        fused = all(p.device.type in ("cuda", "cpu") for p in model.parameters())
    kwargs = {"fused": True} if fused else {"foreach": True}
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, **kwargs)
    return torch.optim.AdamW(groups, lr=lr, **kwargs)


def set_optimizer_values(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """The schedules' values for this step: the same lr everywhere, weight decay on the first group only."""
    for index, group in enumerate(optimizer.param_groups):
        group["lr"] = lr
        if index == 0:
            group["weight_decay"] = weight_decay


def _grads(parameters: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad for p in parameters if p.grad is not None]


def clip_gradients_per_parameter(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale each parameter's gradient to norm at most `max_norm`, separately (the reference's `clip_gradients`).

    `coef = max_norm / (norm + 1e-6)`, applied only where it is below 1, exactly as the reference, but with fused
    `_foreach` kernels and no host synchronisation. Returns the total gradient norm before clipping (a 0-d tensor).
    """
    grads = _grads(parameters)
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    total = torch.linalg.vector_norm(torch.stack(norms))
    coefs = torch._foreach_add(norms, 1e-6)
    torch._foreach_reciprocal_(coefs)
    torch._foreach_mul_(coefs, max_norm)
    torch._foreach_clamp_max_(coefs, 1.0)
    torch._foreach_mul_(grads, coefs)
    return total


def clip_gradients_global(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients together so their joint norm is at most `max_norm` (as `clip_grad_norm_`); returns the
    norm before clipping (a 0-d tensor, no host sync)."""
    grads = _grads(parameters)
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def gradient_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """Total L2 norm of the gradients (a 0-d tensor, no host sync)."""
    grads = _grads(parameters)
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def cancel_last_layer_gradients(model: nn.Module) -> None:
    """Drop the gradients of the head's last layer, so the optimizer leaves it untouched (first epoch in DINO)."""
    for name, param in model.named_parameters():
        if "last_layer" in name:
            param.grad = None
