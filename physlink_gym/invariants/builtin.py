"""Built-in invariants that need no simulator internals (filled in by the invariants work)."""

__all__: list[str] = []
