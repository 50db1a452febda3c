"""Checks for many envs at once: :class:`BatchedInvariantWrapper` for Gymnasium vector envs."""

from physlink_gym.vec.batched import BatchedInvariantWrapper

__all__ = ["BatchedInvariantWrapper"]
