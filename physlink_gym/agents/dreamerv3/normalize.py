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

__all__ = ["ReturnNormalizer", "ema_update", "masked_quantiles"]


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
    def update(self, returns: Tensor, mask: Tensor | None = None) -> None:
        """Move the percentile EMAs towards the percentiles of ``returns`` (in place).

        Args:
            returns: Tensor of any non-empty shape; it is detached.
            mask: Optional 0/1 tensor broadcastable to ``returns``: only entries where it is
                non-zero count. With no such entry the statistics stay as they are. Fixed
                shapes and no host synchronisation either way (``masked_quantiles``).
        """
        self.commit(self.updated(returns, mask))

    @torch.no_grad()
    def updated(self, returns: Tensor, mask: Tensor | None = None) -> Tensor:
        """The statistics ``[lo, hi, corr]`` that :meth:`update` would leave, without changing.

        An update can then use the new scale (:meth:`scale` of this state) and decide later
        whether to keep it (:meth:`commit`), as DreamerV3's update does when a loss is not
        finite.
        """
        if returns.numel() == 0:
            raise ValidationError(
                got="an empty returns tensor",
                expected="at least one return",
                fix="call update() with the lambda returns of a non-empty batch",
            )
        x = returns.detach().to(self.lo.dtype)
        if mask is None:
            q = torch.quantile(x.reshape(-1), self._q.to(x.dtype), interpolation="linear")
            rate: Tensor | float = self.rate
        else:
            mask = mask.expand_as(x).reshape(-1)
            selected = mask.sum() > 0
            q = masked_quantiles(x.reshape(-1), mask, self._q.to(x.dtype))
            q = torch.where(selected, q, 0.0)
            rate = self.rate * selected.to(x.dtype)
        keep = 1.0 - rate
        return torch.stack([self.lo * keep + rate * q[0], self.hi * keep + rate * q[1],
                            self.corr * keep + rate])

    @torch.no_grad()
    def commit(self, state: Tensor, apply: Tensor | None = None) -> None:
        """Store ``state`` from :meth:`updated` (only where ``apply``, a 0-d bool, is True)."""
        if apply is not None:
            state = torch.where(apply, state, torch.stack([self.lo, self.hi, self.corr]))
        self.lo.copy_(state[0])
        self.hi.copy_(state[1])
        self.corr.copy_(state[2])

    def _correction(self, corr: Tensor) -> Tensor | float:
        return 1.0 / torch.clamp(corr, min=self.rate) if self.debias else 1.0

    def offset(self) -> Tensor:
        """Return the (debiased) low percentile EMA (used for logging only).

        Returns:
            0-d tensor.
        """
        return (self.lo * self._correction(self.corr)).detach()

    def scale(self, state: Tensor | None = None) -> Tensor:
        """Return ``max(limit, hi - lo)``, the divisor of the advantages.

        Args:
            state: ``[lo, hi, corr]`` from :meth:`updated`; None reads the stored statistics.

        Returns:
            0-d tensor.
        """
        lo, hi, corr = (self.lo, self.hi, self.corr) if state is None else state.unbind(0)
        factor = self._correction(corr)
        return torch.clamp(hi * factor - lo * factor, min=self.limit).detach()

    def extra_repr(self) -> str:  # noqa: D102
        return f"rate={self.rate}, low={self.low}, high={self.high}, limit={self.limit}"


def masked_quantiles(x: Tensor, mask: Tensor, q: Tensor) -> Tensor:
    """``torch.quantile(x[mask > 0], q)`` (linear interpolation) with fixed shapes.

    The selected entries sort first (the others are replaced by ``+inf``), and the two order
    statistics around position ``q * (k - 1)`` are interpolated as ``torch.quantile`` does; ``k``
    is the number of selected entries, read on the device, so nothing waits for the host. With
    ``k = 0`` the result is meaningless (callers give it zero weight).

    Args:
        x: 1-D values.
        mask: 1-D 0/1 (or bool) selection of the same length.
        q: Quantiles in [0, 1], 1-D.

    Returns:
        Tensor of ``q``'s shape.

    Example:
        >>> x = torch.tensor([5.0, 0.0, 100.0, 1.0, 2.0, 3.0])
        >>> keep = torch.tensor([1, 1, 0, 1, 1, 1])
        >>> q = torch.tensor([0.05, 0.5])
        >>> torch.equal(masked_quantiles(x, keep, q), torch.quantile(x[keep > 0], q))
        True
    """
    keep = mask > 0
    ordered = torch.where(keep, x, torch.inf).sort().values
    count = keep.sum()
    rank = q * (count - 1).clamp(min=0).to(x.dtype)
    below = rank.floor()
    above = rank.ceil().clamp(max=(count - 1).clamp(min=0).to(x.dtype))
    low, high = ordered[below.long()], ordered[above.long()]
    return torch.lerp(low, high, rank - below)


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
