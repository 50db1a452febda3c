"""Built-in invariants on MuJoCo simulator state (filled in by the MuJoCo invariants work)."""

__all__: list[str] = []
