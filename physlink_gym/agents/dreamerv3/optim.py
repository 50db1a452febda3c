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
the device: the update counter of each group is a 0-d tensor, the learning rate may be given as
a tensor (so a compiled update does not recompile when a schedule changes it), and
:attr:`LaProp.last_grad_norm` (global L2 norm of the raw gradients before clipping, the
reference's ``grad_norm`` metric) stays a tensor. :meth:`LaProp.apply` can skip an update on
the device: with ``finite`` False nothing changes (parameters, moments, counter), which is how
DreamerV3 drops an update whose loss or gradient is not finite.

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

    Parameters whose ``grad`` is None are skipped by :meth:`step`; the update counter
    (``group["step"]``, a 0-d float64 tensor) is per group.
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
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            group["step"] = _counter(0, group["params"])
        self.last_grad_norm: Tensor | None = None

    def current_lr(self, group_index: int = 0) -> float:
        """Return the step size the next update of a group will use (a float, for logging).

        Args:
            group_index: Index into ``param_groups``.

        Returns:
            The warm-up scaled learning rate.
        """
        group = self.param_groups[group_index]
        return float(_scheduled_lr(group, group["lr"]))

    def applied_lr(self, lr: Tensor | float | None = None, group_index: int = 0) -> Tensor:
        """The step size the next update of a group will apply (0-d tensor, no host sync).

        Args:
            lr: Learning rate after warm-up; ``None`` uses the group's.
            group_index: Index into ``param_groups``.
        """
        group = self.param_groups[group_index]
        return _scheduled_lr(group, group["lr"] if lr is None else lr)

    def init_state(self) -> None:
        """Create every parameter's moments now (a compiled update then never allocates)."""
        for group in self.param_groups:
            for p in group["params"]:
                self._moments(p)

    def _moments(self, p: Tensor) -> tuple[Tensor, Tensor]:
        state = self.state[p]
        if not state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state["exp_avg"], state["exp_avg_sq"]

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
            if params:
                sq_norms.append(self._update(group, params, grads, group["lr"], None))
        if sq_norms:
            total = torch.stack([s.to(sq_norms[0].device) for s in sq_norms]).sum()
            self.last_grad_norm = total.sqrt()
        return loss

    @torch.no_grad()
    def apply(
        self, grads: list[Tensor], lr: Tensor | float | None = None, finite: Tensor | None = None,
        norms: Tensor | None = None,
    ) -> Tensor:
        """Update the parameters of group 0 with ``grads`` (one per parameter, in order).

        The functional entry point of the DreamerV3 update: no ``.grad`` attributes, the
        learning rate may be a tensor, and ``finite`` (a 0-d bool tensor) turns the update into
        a no-op on the device when False. Non-finite gradients are replaced by zeros first, so
        nothing non-finite ever reaches the optimiser state.

        Args:
            grads: Gradients of ``param_groups[0]["params"]``.
            lr: Learning rate after warm-up; ``None`` uses the group's.
            finite: Apply the update only where this is True.
            norms: The L2 norm of each gradient (``torch.stack(torch._foreach_norm(grads))``)
                when the caller has it already; computed here when None.

        Returns:
            The global L2 norm of the raw gradients (0-d tensor), also in
            :attr:`last_grad_norm`.
        """
        group = self.param_groups[0]
        params = list(group["params"])
        if len(grads) != len(params):
            raise ValidationError(
                got=f"{len(grads)} gradients", expected=f"{len(params)} (one per parameter)",
                fix="pass torch.autograd.grad(loss, optimizer.param_groups[0]['params'])",
            )
        if finite is not None:
            zero = torch.zeros((), dtype=grads[0].dtype, device=grads[0].device)
            grads = [torch.where(finite, g, zero) for g in grads]
            if norms is not None:  # the norms of the zeroed gradients, as computed below
                norms = torch.where(finite, norms, zero)
        sq_norm = self._update(
            group, params, grads, group["lr"] if lr is None else lr, finite, norms
        )
        self.last_grad_norm = sq_norm.sqrt()
        return self.last_grad_norm

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

    def _update(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
        lr: Tensor | float, finite: Tensor | None, norms: Tensor | None = None,
    ) -> Tensor:
        """Update one group in place; return its squared global gradient norm before clipping."""
        beta1, beta2 = group["betas"]
        count = group["step"]
        if not isinstance(count, Tensor):  # a state_dict from before the counter was a tensor
            count = group["step"] = _counter(int(count), params)
        moments = [self._moments(p) for p in params]
        mus, nus = [m for m, _ in moments], [v for _, v in moments]
        gnorms = torch.stack(torch._foreach_norm(grads)) if norms is None else norms
        if group["agc"]:
            pnorms = torch.stack(torch._foreach_norm(params))
            upper = group["agc"] * torch.clamp(pnorms, min=group["agc_pmin"])
            factor = torch.clamp(gnorms / upper, min=1.0).reciprocal()
            if finite is not None:  # a non-finite parameter must not spread into the state
                factor = torch.where(finite, factor, 1.0)
            grads = list(torch._foreach_mul(grads, list(factor.unbind(0))))
        # ``go`` is 1 for an update and 0 for a skipped one: every rate below is gated by it.
        go = count.new_ones(()) if finite is None else finite.to(count.dtype)
        n = count + 1.0
        # Second moment, RMS normalisation (before the momentum: LaProp), momentum. With
        # c2 = sqrt(1 - b2^n): g / (sqrt(nu / c2^2) + eps) = c2 g / (sqrt(nu) + c2 eps), so the
        # bias correction folds into scalars and saves two passes over the parameters.
        c2 = torch.sqrt(1.0 - torch.pow(beta2, n))
        dtype = nus[0].dtype
        torch._foreach_mul_(nus, (1.0 - go * (1.0 - beta2)).to(dtype))
        scaled = torch._foreach_mul(grads, (go * (1.0 - beta2)).to(dtype))
        torch._foreach_addcmul_(nus, grads, scaled)
        denom = torch._foreach_sqrt(nus)
        torch._foreach_add_(denom, (group["eps"] * c2).to(dtype))
        torch._foreach_mul_(mus, (1.0 - go * (1.0 - beta1)).to(dtype))
        scaled = torch._foreach_mul(grads, (go * (1.0 - beta1) * c2).to(dtype))
        torch._foreach_addcdiv_(mus, scaled, denom)
        step_size = go * _scheduled_lr(group, lr, count) / (1.0 - torch.pow(beta1, n))
        torch._foreach_sub_(params, torch._foreach_mul(mus, step_size.to(dtype)))
        count.add_(go)
        return torch.square(gnorms).sum()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from :meth:`state_dict`, validating the update counters.

        Args:
            state_dict: As returned by :meth:`state_dict`.
        """
        groups = state_dict.get("param_groups", [])
        if any(not _valid_count(g.get("step")) for g in groups):
            raise ValidationError(
                got="an optimiser state without a valid per-group 'step' counter",
                expected="a state_dict written by LaProp.state_dict()",
                fix="save the optimiser with optimizer.state_dict() and load that",
            )
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group["betas"] = tuple(group["betas"])
            group["step"] = _counter(int(group["step"]), group["params"])
        if not math.isfinite(sum(float(g["lr"]) for g in self.param_groups)):
            raise ValidationError(
                got="a non-finite learning rate in the loaded state",
                expected="finite learning rates",
                fix="load an optimiser state written by a healthy run",
            )


def _counter(value: int, params: list[Tensor]) -> Tensor:
    device = params[0].device if params else None
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def _valid_count(value: Any) -> bool:
    if isinstance(value, Tensor):
        if value.numel() != 1 or (not value.dtype.is_floating_point
                                  and value.dtype != torch.int64):
            return False
        value = float(value)
        return math.isfinite(value) and value >= 0 and value == int(value)
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _scheduled_lr(
    group: dict[str, Any], lr: Tensor | float, count: Tensor | None = None
) -> Tensor:
    """``lr * min(count, warmup) / warmup``: the step size after ``count`` earlier updates."""
    count = group["step"] if count is None else count
    warmup = int(group["warmup"])
    lr_t = torch.as_tensor(lr, dtype=torch.float64, device=count.device)
    return lr_t * torch.clamp(count, max=warmup) / warmup if warmup else lr_t
