"""``torch.compile`` for the parts of a DreamerV3 update where it pays on a CPU.

When the learner runs compiled (``DreamerV3Config.compile``: True, or "auto" on a long run,
:func:`auto_compile`), three pieces of the update run compiled (inductor, fixed
shapes): the step functions of the fused posterior scan (forward and backward), one imagination
step, and the behaviour losses. They are the pieces with many small elementwise operations;
matrix products run as library calls either way. Each compiles once per process and shape on
its first call; inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, by default under the
system's temporary folder) makes later processes start in seconds.

A missing or broken C++ toolchain must not stop training: the first failure warns once and
every later call of that piece runs eagerly (a genuine error then re-raises from the eager
call). :func:`train_step_graph` compiles the whole update as one graph instead (for
accelerators, where launch overhead dominates; see the update's module docstring).
"""

from __future__ import annotations

import functools
import logging
import shutil
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "AUTO_COMPILE_UPDATES", "auto_compile", "cxx_compiler", "maybe_compiled", "train_step_graph",
]

_LOG = logging.getLogger(__name__)

# With compile="auto", a learn() or fit() call compiles when it plans at least this many
# updates: compiling takes tens of seconds up front and saves a fraction of every update, so
# it pays off only over a long run; the threshold sits above the measured break-even with a
# margin, and README command 1 stays eager (figures: docs/benchmarks/speed.md).
AUTO_COMPILE_UPDATES = 2000


def auto_compile(updates: int, device: torch.device) -> bool:
    """What ``compile="auto"`` decides for ``updates`` planned updates on ``device``.

    Compiled on a CPU with a C++ compiler on the ``PATH`` and at least
    :data:`AUTO_COMPILE_UPDATES` updates; eager otherwise (on accelerators the partial compile
    was not measured: set ``compile=True`` there to try it).
    """
    return device.type == "cpu" and updates >= AUTO_COMPILE_UPDATES and cxx_compiler() is not None


@functools.cache
def cxx_compiler() -> str | None:
    """Path of the C++ compiler inductor would call, or None when it is not installed."""
    try:
        from torch._inductor import cpp_builder

        return shutil.which(cpp_builder.get_cpp_compiler())
    except Exception:  # an unusual toolchain setup: do not compile unasked
        return None


# Inductor options per device type. On a CPU the generated wrapper that calls the kernels is
# C++ instead of Python: the many small compiled scan steps of an update are dominated by
# per-call cost, which the C++ wrapper cuts, at the same compile time (measured in
# docs/benchmarks/speed.md).
_OPTIONS: dict[str, dict[str, Any]] = {"cpu": {"cpp_wrapper": True}}


class _Compiled:
    """``torch.compile(fn)`` that falls back to ``fn`` for good if compiling or running fails.

    One compiled function per device type (that of the first tensor argument), each with
    that device's :data:`_OPTIONS`.
    """

    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        self.fn = fn
        self.options = options
        self.compiled: dict[str, Callable[..., Any]] = {}
        self.failed = False
        self.announced = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            if not self.announced:
                self.announced = True
                _LOG.debug("torch.compile of %s: its first call compiles it", self.fn.__name__)
            device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
            try:
                if device not in self.compiled:
                    self.compiled[device] = torch.compile(
                        self.fn, dynamic=False, options=_OPTIONS.get(device), **self.options
                    )
                return self.compiled[device](*args, **kwargs)
            except Exception as exc:  # any compiler failure: run eagerly from now on
                self.failed = True
                warnings.warn(
                    f"torch.compile of {self.fn.__name__} failed ({type(exc).__name__}: "
                    f"{str(exc)[:300]}); running eagerly. Set compile=False to skip the attempt.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.fn(*args, **kwargs)


_CACHE: dict[Callable[..., Any], _Compiled] = {}


def maybe_compiled(fn: Callable[..., Any], enabled: bool) -> Callable[..., Any]:
    """``fn`` itself, or its compiled version (built once per process, fixed shapes).

    The functions take modules and tensors as arguments rather than being bound methods, so
    copies of a module (``copy.deepcopy``) never call into the original's compiled graph.
    """
    if not enabled:
        return fn
    if fn not in _CACHE:
        _CACHE[fn] = _Compiled(fn, fullgraph=True)
    return _CACHE[fn]


def train_step_graph(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Compile a whole update (``update.train_step``) as one graph, gradients included.

    ``torch._dynamo.config.trace_autograd_ops`` lets dynamo trace ``torch.autograd.grad``
    into the graph, so forward, backward and the optimiser step become one graph. The scans
    unroll, so compiling takes minutes for the default 16 x 64 window on a CPU.
    """
    torch._dynamo.config.trace_autograd_ops = True
    return torch.compile(fn, fullgraph=True, dynamic=False)
