"""LaProp with adaptive gradient clipping and linear warm-up, as DreamerV3 uses it.

Reference: the official DreamerV3 optimiser chain (danijar/dreamerv3, ``dreamerv3/agent.py``
``Agent._make_opt`` and ``embodied/jax/opt.py``), i.e. ``optax.chain(clip_by_agc(0.3),
scale_by_rms(0.999, 1e-20), scale_by_momentum(0.9), scale_by_learning_rate(schedule))`` with
``opt: {lr: 4e-5, agc: 0.3, eps: 1e-20, beta1: 0.9, beta2: 0.999, warmup: 1000}``; LaProp is
Ziyin et al., "LaProp: Separating Momentum and Adaptivity in Adam", 2020. For each parameter
tensor ``p`` with gradient ``g`` at update ``n`` (1-based):

1. AGC: ``g <- g / max(1, ||g|| / (agc * max(pmin, ||p||)))`` (Frobenius norms per tensor).
2. ``nu <- b2 nu + (1 - b2) g^2``; ``u = g / (sqrt(nu / (1 - b2^n)) + eps)``.
3. ``mu <- b1 mu + (1 - b1) u``; ``m = mu / (1 - b1^n)``.
4. ``p <- p - lr_n m`` with ``lr_n = lr * min(n - 1, warmup) / warmup`` (optax's
   ``linear_schedule(0, lr, warmup)`` is evaluated at the count *before* the update, so the
   first update has a step size of exactly 0 and the full ``lr`` is reached at update
   ``warmup + 1``).

All tensor work uses ``torch._foreach_*`` over the whole parameter list, and nothing waits for
the device: :attr:`LaProp.last_grad_norm` (global L2 norm of the raw gradients before
clipping, the reference's ``grad_norm`` metric) stays a tensor.

Example:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = LaProp([w], lr=0.1, warmup=0)
    >>> w.grad = torch.full((3,), 2.0)
    >>> opt.step()
    >>> [round(v, 4) for v in w.tolist()], round(float(opt.last_grad_norm), 4)
    ([0.9, 0.9, 0.9], 3.4641)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from physlink_gym.errors import ConfigurationError, ValidationError

__all__ = ["LaProp"]


class LaProp(torch.optim.Optimizer):
    """LaProp + adaptive gradient clipping + linear warm-up (DreamerV3 reference chain).

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate after warm-up (reference 4e-5).
        betas: ``(b1, b2)`` momentum and second-moment rates (reference 0.9, 0.999).
        eps: Added to the RMS denominator (reference 1e-20).
        agc: Adaptive clipping ratio; 0 turns clipping off (reference 0.3).
        agc_pmin: Floor of the parameter norm in the clipping bound (reference 1e-3).
        warmup: Number of updates of the linear learning-rate ramp; 0 turns it off
            (reference 1000).

    Parameters whose ``grad`` is None are skipped; the update counter is per group.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 4e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-20,
        agc: float = 0.3,
        agc_pmin: float = 1e-3,
        warmup: int = 1000,
    ) -> None:
        checks = {
            "lr >= 0": lr >= 0.0,
            "0 <= betas < 1": all(0.0 <= b < 1.0 for b in betas) and len(betas) == 2,
            "eps >= 0": eps >= 0.0,
            "agc >= 0": agc >= 0.0,
            "agc_pmin > 0": agc_pmin > 0.0,
            "warmup an int >= 0": isinstance(warmup, int) and warmup >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigurationError(
                got=f"lr={lr}, betas={betas}, eps={eps}, agc={agc}, agc_pmin={agc_pmin}, "
                f"warmup={warmup}",
                expected=", ".join(bad),
                fix="use the reference values LaProp(params, lr=4e-5, betas=(0.9, 0.999), "
                "eps=1e-20, agc=0.3, agc_pmin=1e-3, warmup=1000)",
            )
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "agc": agc,
            "agc_pmin": agc_pmin,
            "warmup": warmup,
            "step": 0,
        }
        super().__init__(params, defaults)
        self.last_grad_norm: Tensor | None = None

    @staticmethod
    def _lr_at(group: dict[str, Any], count: int) -> float:
        """Step size of the update that follows ``count`` earlier updates."""
        lr = float(group["lr"])
        warmup = int(group["warmup"])
        return lr * min(count, warmup) / warmup if warmup else lr

    def current_lr(self, group_index: int = 0) -> float:
        """Return the step size the next update of a group will use (for logging).

        Args:
            group_index: Index into ``param_groups``.

        Returns:
            The warm-up scaled learning rate.
        """
        group = self.param_groups[group_index]
        return self._lr_at(group, int(group["step"]))

    def _collect(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValidationError(
                    got="a sparse gradient",
                    expected="dense gradients",
                    fix="use dense embeddings (sparse=False) with LaProp",
                )
            params.append(p)
            grads.append(p.grad)
        return params, grads

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Apply one update to every parameter that has a gradient.

        Args:
            closure: Optional callable that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sq_norms: list[Tensor] = []
        for group in self.param_groups:
            params, grads = self._collect(group)
            if not params:
                continue
            sq_norms.append(self._update_group(group, params, grads))
        if sq_norms:
            self.last_grad_norm = torch.stack([s.to(sq_norms[0].device) for s in sq_norms])
            self.last_grad_norm = self.last_grad_norm.sum().sqrt()
        return loss

    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> Tensor:
        """Update one group in place; return its squared global gradient norm before clipping."""
        beta1, beta2 = group["betas"]
        count = int(group["step"])
        n = count + 1
        lr = self._lr_at(group, count)
        mus, nus = [], []
        for p in params:
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            mus.append(state["exp_avg"])
            nus.append(state["exp_avg_sq"])
        gnorms = torch.stack(torch._foreach_norm(grads))
        if group["agc"]:
            pnorms = torch.stack(torch._foreach_norm(params))
            upper = group["agc"] * torch.clamp(pnorms, min=group["agc_pmin"])
            factor = torch.clamp(gnorms / upper, min=1.0).reciprocal()
            grads = list(torch._foreach_mul(grads, list(factor.unbind(0))))
        # Second moment, RMS normalisation (before the momentum: LaProp), momentum. With
        # c2 = sqrt(1 - b2^n): g / (sqrt(nu / c2^2) + eps) = c2 g / (sqrt(nu) + c2 eps), so the
        # bias correction folds into scalars and saves two passes over the parameters.
        torch._foreach_mul_(nus, beta2)
        torch._foreach_addcmul_(nus, grads, grads, value=1.0 - beta2)
        c2 = math.sqrt(1.0 - beta2**n)
        denom = torch._foreach_sqrt(nus)
        torch._foreach_add_(denom, group["eps"] * c2)
        torch._foreach_mul_(mus, beta1)
        torch._foreach_addcdiv_(mus, grads, denom, value=(1.0 - beta1) * c2)
        step_size = lr / (1.0 - beta1**n)
        if step_size:
            torch._foreach_add_(params, mus, alpha=-step_size)
        group["step"] = n
        return torch.square(gnorms).sum()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from :meth:`state_dict`, validating the update counters.

        Args:
            state_dict: As returned by :meth:`state_dict`.
        """
        groups = state_dict.get("param_groups", [])
        if any(not isinstance(g.get("step"), int) or g["step"] < 0 for g in groups):
            raise ValidationError(
                got="an optimiser state without a valid per-group 'step' counter",
                expected="a state_dict written by LaProp.state_dict()",
                fix="save the optimiser with optimizer.state_dict() and load that",
            )
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group["betas"] = tuple(group["betas"])
        if not math.isfinite(sum(float(g["lr"]) for g in self.param_groups)):
            raise ValidationError(
                got="a non-finite learning rate in the loaded state",
                expected="finite learning rates",
                fix="load an optimiser state written by a healthy run",
            )
