"""Agents trained on invariant-checked experience."""
