"""Physics as a training signal (opt-in): soft invariants on the world model's predictions.

With ``physics_weight > 0`` in the config, every update adds

    physics_weight * mean_t sum_i max(r_i(obs_{t-1}, a_t, ô_t) - tolerance_i, 0)

to the world-model loss, where ``ô_t`` is the model's one-step open-loop prediction of the
observation at ``t``: the decoder applied to the deterministic state ``h_t`` (which has seen
``a_t`` but not ``obs_t``) and the prior's probabilities of the latent (their expectation,
not a sample, so the term is deterministic and smooth). ``r_i`` are the residuals of the soft,
transition-only invariants that have a differentiable (torch) version; the mean runs over the
valid steps that continue an episode (the previous entry valid, ``is_first`` False). Gradients
reach the decoder and the RSSM (GRU, prior head), never the actor or the critic.

An invariant has a torch version when its bound check carries a ``torch`` attribute:
``pendulum_energy`` does; for your own, pass ``torch_fn`` to
:func:`~physlink_gym.invariants.batch_invariant`, written with torch operations on a dict of
tensors (``obs``, ``action`` in env units, ``next_obs``). This is not part of the reference
algorithm; it is off by default (see docs/imagination.md for what it measurably does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from physlink_gym.agents.dreamerv3.distributions import symexp
from physlink_gym.errors import ConfigurationError

__all__ = ["PhysicsTerms", "physics_terms"]


class PhysicsTerms:
    """The differentiable soft invariants a world model is trained against.

    Args:
        checks: ``(name, torch_residual, tolerance)`` triples.
        low: Lower bounds of a Box action space (learner actions in [-1, 1] are mapped to env
            units before the residuals); None for Discrete (the index is passed).
        high: Upper bounds of the same Box action space; None for Discrete.
    """

    def __init__(self, checks: Sequence[tuple[str, Callable[[dict[str, Tensor]], Tensor], float]],
                 low: np.ndarray | None, high: np.ndarray | None) -> None:
        self.checks = list(checks)
        self.names = [name for name, _, _ in self.checks]
        self._low = None if low is None else torch.as_tensor(low, dtype=torch.float32)
        self._high = None if high is None else torch.as_tensor(high, dtype=torch.float32)

    def env_action(self, action: Tensor) -> Tensor:
        """Learner actions ``[..., A]`` to env units (Box rescale; Discrete: the index)."""
        if self._low is None or self._high is None:
            return action.argmax(-1, keepdim=True).to(action.dtype)
        low, high = self._low.to(action.device), self._high.to(action.device)
        return low + (action.clamp(-1.0, 1.0) + 1.0) * 0.5 * (high - low)

    def excess(self, obs: Tensor, action: Tensor, next_obs: Tensor) -> Tensor:
        """``sum_i max(r_i - tolerance_i, 0)`` per transition of ``[N, ...]`` tensors."""
        batch = {"obs": obs, "action": self.env_action(action), "next_obs": next_obs}
        total = torch.zeros(obs.shape[0], device=obs.device, dtype=obs.dtype)
        for _, fn, tolerance in self.checks:
            total = total + torch.relu(fn(batch).reshape(-1).to(obs.dtype) - tolerance)
        return total


def physics_terms(invariants: Sequence[Any], env: Any, action_space: Any) -> PhysicsTerms:
    """Bind the soft invariants of ``invariants`` that can train the world model.

    Raises:
        ConfigurationError: when a soft invariant is not transition-only or has no torch
            version, or when none is left.
    """
    from physlink_gym.invariants.by_name import coerce_invariant

    checks, refused = [], []
    for item in invariants:
        inv = coerce_invariant(item)
        if inv.mode != "soft":
            continue  # hard invariants keep data out of replay; they are not a loss
        torch_fn = None
        if inv.transition_only:
            try:
                torch_fn = getattr(inv.bind(env), "torch", None)
            except Exception as exc:  # NotApplicableError and friends: say which
                refused.append(f"{inv.name} ({type(exc).__name__}: {exc})")
                continue
        if torch_fn is None:
            refused.append(inv.name)
            continue
        checks.append((inv.name, torch_fn, float(inv.tolerance)))
    if refused or not checks:
        raise ConfigurationError(
            got=f"physics_weight > 0 with soft invariants {refused or 'none'} not differentiable"
            if refused else "physics_weight > 0 and no soft invariant",
            expected="soft, transition-only invariants with a torch version (pendulum_energy, "
            "or batch_invariant(..., torch_fn=...))",
            fix="give each soft invariant a torch_fn, make it hard, or leave physics_weight at 0",
        )
    low = getattr(action_space, "low", None)
    high = getattr(action_space, "high", None)
    return PhysicsTerms(checks, low, high)


def one_step_physics_loss(m: Any, data: dict[str, Tensor], deter: Tensor,
                          prior: Tensor) -> tuple[Tensor, Tensor]:
    """The physics term of one update and its unweighted mean (see the module docstring).

    ``deter [B, T, D]`` are the posterior's deterministic states, ``prior [B, T, L, C]`` the
    prior's log-probabilities at each step.
    """
    physics: PhysicsTerms = m.physics
    feat = torch.cat([deter, prior.exp().flatten(-2)], -1)
    predicted = symexp(m.decoder(feat[:, 1:]).float())  # ô_t for t >= 1
    b, t1 = predicted.shape[:2]
    obs = data["obs"][:, :-1].reshape(b * t1, -1)
    action = data["action"][:, 1:].reshape(b * t1, -1)
    excess = physics.excess(obs, action, predicted.reshape(b * t1, -1)).reshape(b, t1)
    mask = (data["valid"][:, 1:] * data["valid"][:, :-1] * (1.0 - data["is_first"][:, 1:]))
    mask = mask.to(excess.dtype)
    loss = (excess * mask).sum() / mask.sum().clamp(min=1.0)
    return loss, loss.detach()
