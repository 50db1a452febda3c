"""Return normalisation and the slow (EMA) critic of DreamerV3.

Sources: official DreamerV3 code (danijar/dreamerv3, 2024 and later): ``embodied/jax/utils.py``
``Normalize`` (``impl: perc``) and ``SlowModel``; ``dreamerv3/configs.yaml``
``retnorm: {impl: perc, rate: 0.01, limit: 1.0, perclo: 5.0, perchi: 95.0, debias: False}`` and
``slowvalue: {rate: 0.02, every: 1}``. Paper: Hafner et al., Nature 2025, eq. 12.

Example:
    >>> import torch
    >>> norm = ReturnNormalizer()
    >>> norm.update(torch.arange(101.0))
    >>> round(float(norm.offset()), 4), float(norm.scale())
    (0.05, 1.0)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from physlink_gym.errors import ConfigurationError, ValidationError

__all__ = ["ReturnNormalizer", "ema_update"]


class ReturnNormalizer(nn.Module):
    """EMA of the 5th and 95th return percentiles; advantages are divided by :meth:`scale`.

    ``lo <- (1 - rate) lo + rate * perc(R, low)`` and likewise ``hi``, both starting at 0
    (reference ``Normalize._update``); ``scale = max(limit, hi - lo)``. The reference's
    ``debias`` option (off in the DreamerV3 config, and off here by default) divides both
    statistics by ``max(rate, corr)`` where ``corr`` is the EMA of 1. Percentiles use linear
    interpolation like ``jnp.percentile``. The state lives in buffers, so it saves with
    ``state_dict``.

    Args:
        rate: EMA rate (reference 0.01).
        low: Lower percentile in [0, 100] (reference 5).
        high: Upper percentile in [0, 100] (reference 95).
        limit: Lower bound of the scale (reference 1.0).
        debias: Apply the reference's optional EMA debiasing.
    """

    lo: Tensor
    hi: Tensor
    corr: Tensor
    _q: Tensor

    def __init__(
        self,
        rate: float = 0.01,
        low: float = 5.0,
        high: float = 95.0,
        limit: float = 1.0,
        debias: bool = False,
    ) -> None:
        super().__init__()
        if not (0.0 < rate <= 1.0 and 0.0 <= low < high <= 100.0 and limit >= 0.0):
            raise ConfigurationError(
                got=f"rate={rate}, low={low}, high={high}, limit={limit}",
                expected="0 < rate <= 1, 0 <= low < high <= 100 and limit >= 0",
                fix="use the reference values rate=0.01, low=5, high=95, limit=1",
            )
        self.rate = rate
        self.low = low
        self.high = high
        self.limit = limit
        self.debias = debias
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("corr", torch.zeros(()))
        self.register_buffer("_q", torch.tensor([low / 100.0, high / 100.0]), persistent=False)

    @torch.no_grad()
    def update(self, returns: Tensor) -> None:
        """Move the percentile EMAs towards the percentiles of ``returns`` (all entries).

        Args:
            returns: Tensor of any non-empty shape; it is detached.
        """
        if returns.numel() == 0:
            raise ValidationError(
                got="an empty returns tensor",
                expected="at least one return",
                fix="call update() with the lambda returns of a non-empty batch",
            )
        x = returns.detach().reshape(-1).to(self.lo.dtype)
        q = torch.quantile(x, self._q.to(x.dtype), interpolation="linear")
        keep = 1.0 - self.rate
        self.lo.mul_(keep).add_(self.rate * q[0])
        self.hi.mul_(keep).add_(self.rate * q[1])
        self.corr.mul_(keep).add_(self.rate)

    def _correction(self) -> Tensor | float:
        return 1.0 / torch.clamp(self.corr, min=self.rate) if self.debias else 1.0

    def offset(self) -> Tensor:
        """Return the (debiased) low percentile EMA (used for logging only).

        Returns:
            0-d tensor.
        """
        return (self.lo * self._correction()).detach()

    def scale(self) -> Tensor:
        """Return ``max(limit, hi - lo)``, the divisor of the advantages.

        Returns:
            0-d tensor.
        """
        corr = self._correction()
        return torch.clamp(self.hi * corr - self.lo * corr, min=self.limit).detach()

    def extra_repr(self) -> str:  # noqa: D102
        return f"rate={self.rate}, low={self.low}, high={self.high}, limit={self.limit}"


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, rate: float = 0.02) -> None:
    """In place ``target <- rate * source + (1 - rate) * target`` (reference ``SlowModel``).

    Applies to all parameters and floating-point buffers; the reference slow critic uses rate
    0.02 after every update (``slowvalue: {rate: 0.02, every: 1}``).

    Args:
        target: The slow copy, updated in place.
        source: The online module, with the same parameter names and shapes.
        rate: Mixing rate in (0, 1].
    """
    if not 0.0 < rate <= 1.0:
        raise ConfigurationError(
            got=f"rate={rate}", expected="0 < rate <= 1", fix="use the reference rate=0.02"
        )
    dst_named = list(target.named_parameters()) + [
        (k, b) for k, b in target.named_buffers() if b.is_floating_point()
    ]
    src_named = list(source.named_parameters()) + [
        (k, b) for k, b in source.named_buffers() if b.is_floating_point()
    ]
    if [k for k, _ in dst_named] != [k for k, _ in src_named] or any(
        d.shape != s.shape for (_, d), (_, s) in zip(dst_named, src_named, strict=True)
    ):
        raise ValidationError(
            got="target and source modules with different parameter names or shapes",
            expected="two instances of the same architecture",
            fix="build the slow critic with copy.deepcopy(critic)",
        )
    if not dst_named:
        return
    dst = [t for _, t in dst_named]
    src = [t for _, t in src_named]
    if rate == 1.0:
        torch._foreach_copy_(dst, src)
        return
    torch._foreach_mul_(dst, 1.0 - rate)
    torch._foreach_add_(dst, src, alpha=rate)
