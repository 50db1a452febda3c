"""Run DreamerV3 through the RL Baselines3 Zoo (``rl_zoo3``) ``train`` and ``enjoy`` scripts.

The zoo looks algorithms up in its table ``rl_zoo3.utils.ALGOS``; :func:`register` adds
:class:`~physlink_gym.DreamerV3` to it under ``"dreamerv3"``. This module is also a zoo
hyperparameter file (the module-level :data:`hyperparams` dict), so ``--conf-file
physlink_gym.zoo`` works. From the shell (``pip install "physlink-gym[zoo]"`` first)::

    python -m physlink_gym.zoo train --env Pendulum-v1 -n 20000 --eval-freq -1
    python -m physlink_gym.zoo enjoy --env Pendulum-v1 -n 1000

``train`` registers the algorithm and fills in ``--algo dreamerv3`` and ``--conf-file
physlink_gym.zoo`` when they are not given; ``enjoy`` fills in ``--algo dreamerv3`` and
``--folder logs`` (where ``train`` writes; the zoo's own default, ``rl-trained-agents``, holds
downloaded SB3 agents only). Every other argument goes to the zoo unchanged, e.g.
``--hyperparams preset:"'debug'" train_ratio:128``. The model lands in the zoo's layout,
``logs/dreamerv3/Pendulum-v1_1/Pendulum-v1.zip``, as a safe physlink checkpoint, and ``enjoy``
threads DreamerV3's recurrent state through ``predict`` like the zoo's RecurrentPPO.

From Python, call :func:`register` before ``rl_zoo3.train.train()`` or ``rl_zoo3.enjoy.enjoy()``.
"""

from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Sequence
from typing import Any

import gymnasium as gym

from physlink_gym.errors import ConfigurationError, PhysLinkError

__all__ = ["hyperparams", "invariant_wrapper", "main", "register"]

PROG = "python -m physlink_gym.zoo"
ALGO = "dreamerv3"
_INSTALL = 'pip install "physlink-gym[zoo]"'


class _FreshEntries(dict[str, dict[str, Any]]):
    """A dict whose ``d[key]`` is a deep copy of the stored entry.

    The zoo's ``ExperimentManager`` updates the entry it reads with ``--hyperparams`` and then
    deletes keys from it (``n_timesteps``, ``env_wrapper``, ...) in place; with a plain dict a
    second run in the same process would see the first one's edits (or fail on a missing
    ``n_timesteps``).
    """

    def __getitem__(self, key: str) -> dict[str, Any]:
        return copy.deepcopy(super().__getitem__(key))


hyperparams: dict[str, dict[str, Any]] = _FreshEntries(
    {
        # Any env without its own entry. Vector observations only (``MlpPolicy``).
        "default": {
            "policy": "MlpPolicy",
            # 500k env steps: the budget of the paper's proprioceptive-control benchmark
            # (Hafner et al., "Mastering diverse control tasks through world models", 2025).
            "n_timesteps": 500_000,
            # DreamerV3(preset="1m") default; config.py: the reference's `size1m`.
            "preset": "1m",
            # DreamerV3Config.train_ratio (config.py, after the reference's configs.yaml).
            "train_ratio": 1024,
            # DreamerV3(learning_starts=1024) default (algorithm.py).
            "learning_starts": 1024,
        },
        "Pendulum-v1": {
            "policy": "MlpPolicy",
            # 20k env steps: the zoo's own Pendulum-v1 budget for SAC and TD3
            # (rl_zoo3 hyperparams/sac.yml, td3.yml), so results compare at equal cost.
            "n_timesteps": 20_000,
            "preset": "1m",  # as "default"
            # 512: the reference setting named in docs/benchmarks/learning.md (configs.yaml's
            # dmc_proprio `run.train_ratio` in the 2023 code); half of "default" for CPU cost.
            "train_ratio": 512,
            # The short-budget settings of docs/benchmarks/learning.md, where they reach a
            # mean return >= -200 within 3k-4k env steps in 3 seeds (the reference's lr 4e-5
            # with a 1000-update warm-up was at -1205 after 3k steps, one seed).
            "learning_starts": 512,
            "policy_kwargs": {"lr": 3e-4, "warmup": 100},
            # Check every transition against finite values, action bounds and Pendulum's
            # discrete energy identity; flagged transitions are masked in DreamerV3's replay.
            "env_wrapper": "physlink_gym.zoo.invariant_wrapper",
        },
    }
)
"""Zoo hyperparameters per env id (``--conf-file physlink_gym.zoo``); reads return copies."""


def register(name: str = "dreamerv3") -> None:
    """Add :class:`~physlink_gym.DreamerV3` to the zoo's algorithm table ``rl_zoo3.utils.ALGOS``.

    ``rl_zoo3.train``, ``rl_zoo3.enjoy`` and ``rl_zoo3.exp_manager`` share that dict, so one
    call before running them is enough. Calling it again changes nothing.

    Args:
        name: The ``--algo`` name to register.

    Raises:
        ConfigurationError: ``rl_zoo3`` cannot be imported.
    """
    try:
        from rl_zoo3.utils import ALGOS
    except ImportError as exc:
        raise ConfigurationError(
            got=f"no importable rl_zoo3 ({exc})",
            expected="rl_zoo3 installed to run DreamerV3 through the RL Zoo",
            fix=_INSTALL,
        ) from None
    from physlink_gym.agents.dreamerv3.algorithm import DreamerV3

    ALGOS[name] = DreamerV3


def invariant_wrapper(env: gym.Env[Any, Any], invariants: str = "auto") -> gym.Env[Any, Any]:
    """Wrap ``env`` in :class:`~physlink_gym.InvariantWrapper`; a zoo ``env_wrapper``.

    Use it in a hyperparameter entry as ``env_wrapper: physlink_gym.zoo.invariant_wrapper``, or
    with names: ``env_wrapper: [{physlink_gym.zoo.invariant_wrapper: {invariants:
    "finite,action_bounds"}}]``.

    Args:
        env: The env the zoo built (``gym.make`` plus ``Monitor``).
        invariants: Comma-separated invariant names, or ``"auto"`` to choose them from the env
            id as ``physlink-gym train --invariants auto`` does.

    Returns:
        The wrapped env.

    Raises:
        ConfigurationError: ``"auto"`` for an env without a registered id, or an unknown name.
    """
    from physlink_gym._commands import resolve_invariants
    from physlink_gym.wrappers import InvariantWrapper

    env_id = env.spec.id if env.spec is not None else ""
    if not env_id and invariants.strip() == "auto":
        raise ConfigurationError(
            got=f'invariants="auto" for {env}, which has no registered env id',
            expected="an env made with gymnasium.make, or explicit invariant names",
            fix='pass invariants="finite,action_bounds" in the env_wrapper kwargs',
        )
    return InvariantWrapper(env, resolve_invariants(invariants, env_id))


def _given(args: Sequence[str], *names: str) -> bool:
    """Whether one of the option ``names`` is in ``args`` (``--x v``, ``--x=v`` or a prefix)."""
    for arg in args:
        key = arg.split("=", 1)[0]
        if key in names:
            return True
        if key.startswith("--") and len(key) > 2 and any(
            n.startswith("--") and n.startswith(key) for n in names
        ):
            return True  # argparse accepts unambiguous prefixes of long options
    return False


def _with_defaults(command: str, args: list[str]) -> list[str]:
    defaults: list[str] = []
    if not _given(args, "--algo"):
        defaults += ["--algo", ALGO]
    if command == "train" and not _given(args, "-conf", "--conf-file"):
        defaults += ["--conf-file", "physlink_gym.zoo"]
    if command == "enjoy" and not _given(args, "-f", "--folder"):
        defaults += ["--folder", "logs"]
    return defaults + args


def _error(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _run_zoo(command: str, args: list[str]) -> int:
    entry = getattr(importlib.import_module(f"rl_zoo3.{command}"), command)
    saved_argv = sys.argv
    sys.argv = [f"{PROG} {command}", *args]
    try:
        entry()
    except SystemExit as exc:  # argparse (usage error, --help) inside the zoo
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        return _error(str(exc.code), 1)
    finally:
        sys.argv = saved_argv
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``train`` or ``enjoy`` of the zoo with DreamerV3 registered (see the module doc).

    Args:
        argv: ``["train" | "enjoy", *zoo_arguments]``; ``None`` reads ``sys.argv[1:]``.

    Returns:
        0 on success, 1 on a :class:`~physlink_gym.errors.PhysLinkError` (printed as one
        line), 2 for an unknown subcommand or a usage error, else the zoo's exit code.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(f"usage: {PROG} {{train,enjoy}} [rl_zoo3 arguments]  ({PROG} train --help)")
        return 0
    if not args or args[0] not in ("train", "enjoy"):
        got = repr(args[0]) if args else "no subcommand"
        return _error(f"got {got}; expected 'train' or 'enjoy', e.g. "
                      f"{PROG} train --env Pendulum-v1", 2)
    command, rest = args[0], args[1:]
    try:
        register()
        return _run_zoo(command, _with_defaults(command, rest))
    except PhysLinkError as exc:
        return _error(str(exc), 1)


if __name__ == "__main__":
    sys.exit(main())
