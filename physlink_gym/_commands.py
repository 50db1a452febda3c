"""Bodies of the ``physlink-gym train | evaluate | report | audit`` commands (loaded lazily).

Everything a user can get wrong (env id, missing extra, invariant name, paths) becomes a
:class:`~physlink_gym.errors.PhysLinkError`, which the CLI prints as one line.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import gymnasium as gym

from physlink_gym.errors import ConfigurationError, ValidationError

__all__ = ["audit", "evaluate", "make_env_fn", "report", "resolve_invariants", "train"]


def check_env_id(env_id: str) -> None:
    """Raise a ConfigurationError for an unknown id or a missing optional dependency."""
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        raise ConfigurationError(
            got=f"--env {env_id!r} ({exc})",
            expected="a registered Gymnasium env id such as Pendulum-v1 or HalfCheetah-v5",
            fix="check the spelling; `python -c \"import gymnasium; gymnasium.pprint_registry()\"` "
            "lists them",
        ) from None
    try:
        gym.make(env_id).close()
    except gym.error.DependencyNotInstalled as exc:
        raise ConfigurationError(
            got=f"--env {env_id!r}, whose dependencies are missing ({exc})",
            expected="the simulator the env needs",
            fix='pip install "physlink-gym[mujoco]" for MuJoCo envs',
        ) from None


def _is_mujoco(env_id: str) -> bool:
    entry = str(gym.spec(env_id).entry_point)
    return "mujoco" in entry


def resolve_invariants(spec: str, env_id: str) -> list[Any]:
    """Turn ``"finite,action_bounds"`` (or ``"auto"``) into invariant objects."""
    from physlink_gym import invariants
    from physlink_gym._builtin_names import BUILTIN_INVARIANTS as INVARIANT_NAMES

    if spec.strip() == "auto":
        names = ["finite", "action_bounds"]
        if _is_mujoco(env_id):
            names.append("sim_health")
        if env_id.startswith("Pendulum-"):
            names.append("pendulum_energy")
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in INVARIANT_NAMES or not hasattr(invariants, n)]
    if unknown:
        raise ConfigurationError(
            got=f"--invariants with unknown name(s) {', '.join(unknown)}",
            expected=f"names from: {', '.join(INVARIANT_NAMES)}",
            fix="pass e.g. --invariants finite,action_bounds",
        )
    return [getattr(invariants, n)() for n in names]


def make_env_fn(env_id: str, invariant_spec: str) -> Any:
    """A picklable env factory: ``gym.make(env_id)`` wrapped in :class:`InvariantWrapper`."""
    from physlink_gym.wrappers import InvariantWrapper

    def make() -> gym.Env[Any, Any]:
        return InvariantWrapper(gym.make(env_id), resolve_invariants(invariant_spec, env_id))

    return make


def check_device(device: str) -> None:
    """``auto``, ``cpu``, or an available ``cuda[:N]`` / ``mps``; else a ConfigurationError."""
    import torch

    try:
        parsed = torch.device(device) if device != "auto" else None
    except (RuntimeError, ValueError):
        parsed = None
        ok = False
    else:
        ok = parsed is None or parsed.type == "cpu" or (
            parsed.type == "cuda" and torch.cuda.is_available()
            and (parsed.index or 0) < torch.cuda.device_count()
        ) or (parsed.type == "mps" and torch.backends.mps.is_available())
    if not ok:
        raise ConfigurationError(
            got=f"--device {device!r}",
            expected="auto, cpu, or a CUDA/MPS device this machine has",
            fix="pass --device auto (CUDA when available, else CPU) or --device cpu",
        )


def check_writable_dir(path: Path, what: str) -> None:
    """``path`` is a folder (or can be made one) that we can write into."""
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if existing == path and not path.is_dir():
        raise ValidationError(got=f"{what} {str(path)!r}, which is a file",
                              expected="a folder (existing or new)",
                              fix=f"pass another {what}, e.g. runs/")
    if existing != path and not existing.is_dir():
        raise ValidationError(got=f"{what} {str(path)!r}, under the file {str(existing)!r}",
                              expected="a path whose parents are folders",
                              fix=f"pass another {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValidationError(got=f"{what} {str(path)!r}, in the read-only folder "
                              f"{str(existing)!r}", expected="a folder you can write to",
                              fix=f"pass a {what} in a writable place")


def check_save_path(save: str) -> None:
    """The checkpoint path of ``--save`` can be written: not a folder, parents writable."""
    target = Path(save) if Path(save).suffix else Path(save).with_suffix(".zip")
    if target.is_dir():
        raise ValidationError(got=f"--save {save!r}, which is a folder",
                              expected="a file path for the checkpoint",
                              fix="pass e.g. --save runs/pendulum_dreamer")
    check_writable_dir(target.parent, "--save folder")


def train(args: argparse.Namespace) -> int:
    """``physlink-gym train``: see ``physlink-gym train --help``."""
    check_env_id(args.env)
    resolve_invariants(args.invariants, args.env)  # fail fast, before any worker starts
    check_device(args.device)
    check_writable_dir(Path(args.logdir), "--logdir")
    if args.save:  # checked now: a trained model is never lost to a bad path
        check_save_path(args.save)
    from stable_baselines3.common.env_util import make_vec_env

    from physlink_gym.agents.dreamerv3.algorithm import DreamerV3
    from physlink_gym.report import ComplianceReport

    venv = make_vec_env(make_env_fn(args.env, args.invariants), n_envs=args.n_envs,
                        seed=args.seed)
    model = DreamerV3(
        "MlpPolicy", venv, preset=args.preset, tensorboard_log=args.logdir, verbose=1,
        seed=args.seed, device=args.device, train_ratio=args.train_ratio,
        learning_starts=args.learning_starts, policy_kwargs=dict(args.config) or None,
    )
    model.set_logger(_run_logger(args.logdir))
    # TensorBoard views beyond the scalars: the world-model triptych and the compliance plot,
    # histograms and hparams, about five times per run.
    from physlink_gym.viz import ComplianceCallback, TriptychCallback

    every = max(args.timesteps // 5, 1)
    callbacks = [ComplianceCallback(every_n_steps=every),
                 TriptychCallback(gym.make(args.env), every)]  # GIFs in the run's folder
    if args.eval_episodes:
        print(_evaluation("before training", model, args))
    start = time.perf_counter()
    model.learn(args.timesteps, callback=callbacks, progress_bar=not args.no_progress,
                log_interval=1)
    elapsed = time.perf_counter() - start
    print(f"trained {model.num_timesteps} env steps with {model._n_updates} updates in "
          f"{elapsed:.0f} s")
    if args.eval_episodes:
        print(_evaluation("after training", model, args))
    run_dir = Path(model.logger.get_dir() or args.logdir)
    save_path = Path(args.save) if args.save else run_dir / "model.zip"
    model.save(save_path)
    report_ = ComplianceReport.merge(venv.env_method("compliance_report"))
    report_.export(run_dir / "compliance.json")
    report_.plot(run_dir / "compliance.png")
    print(f"checkpoint: {save_path if save_path.suffix else save_path.with_suffix('.zip')}")
    print(f"TensorBoard: tensorboard --logdir {args.logdir}   (run folder {run_dir})")
    print("compliance:")
    print(report_.summary())
    venv.close()
    return 0


def _run_logger(logdir: str) -> Any:
    """TensorBoard in ``<logdir>/DreamerV3_<n>`` (a new run folder) and one console line a dump.

    SB3's stdout tables print about 40 lines per log dump; one line per episode (the step,
    the return, the invalid rate, the updates and their rate, the loss) reads better.
    """
    from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
    from stable_baselines3.common.utils import get_latest_run_id

    from physlink_gym.callbacks import OneLineOutput

    run = Path(logdir) / f"DreamerV3_{get_latest_run_id(logdir, 'DreamerV3') + 1}"
    run.mkdir(parents=True, exist_ok=True)
    return Logger(str(run), [TensorBoardOutputFormat(str(run)), OneLineOutput()])


def _evaluation(when: str, model: Any, args: argparse.Namespace) -> str:
    """Mean return of ``args.eval_episodes`` deterministic episodes on the plain env."""
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    env = Monitor(gym.make(args.env))
    env.reset(seed=args.seed + 10_000)
    mean, std = evaluate_policy(model, env, n_eval_episodes=args.eval_episodes,
                                deterministic=True)
    env.close()
    return (f"evaluation {when}: mean return {mean:.1f} ± {std:.1f} over {args.eval_episodes} "
            "deterministic episodes")


def evaluate(args: argparse.Namespace) -> int:
    """``physlink-gym evaluate``: mean return of a checkpoint over N episodes."""
    check_env_id(args.env)
    if not Path(args.checkpoint).exists() and not Path(args.checkpoint + ".zip").exists():
        raise ValidationError(
            got=f"checkpoint {args.checkpoint!r}, which does not exist",
            expected="a file written by DreamerV3.save() or physlink-gym train",
            fix="pass the path printed by physlink-gym train",
        )
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    from physlink_gym.agents.dreamerv3.algorithm import DreamerV3

    venv = make_vec_env(args.env, n_envs=1, seed=args.seed)
    model = DreamerV3.load(args.checkpoint, env=venv)
    mean, std = evaluate_policy(model, venv, n_eval_episodes=args.episodes,
                                deterministic=not args.stochastic)
    print(f"{args.env}: mean return {mean:.2f} ± {std:.2f} over {args.episodes} episodes")
    return 0


def report(args: argparse.Namespace) -> int:
    """``physlink-gym report``: print a compliance summary and write its plot."""
    from physlink_gym.report import ComplianceReport

    source = Path(args.source)
    path = source / "compliance.json" if source.is_dir() else source
    if not path.is_file():
        raise ValidationError(
            got=f"{args.source!r}, where no compliance report was found",
            expected="a run folder holding compliance.json, or a report JSON file",
            fix="pass the run folder printed by physlink-gym train",
        )
    try:
        report_ = ComplianceReport.from_json(path)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise ValidationError(
            got=f"{path} ({type(exc).__name__}: {str(exc)[:200]})",
            expected="a JSON file written by ComplianceReport.export() (or a run folder "
            "holding compliance.json; a checkpoint zip is not a report)",
            fix="pass the run folder printed by physlink-gym train, or re-export the report",
        ) from None
    plot_path = path.with_suffix(".png")
    try:
        report_.plot(plot_path)
    except OSError as exc:
        raise ValidationError(
            got=f"the plot {str(plot_path)!r} cannot be written ({exc.strerror or exc})",
            expected="a writable folder beside the report",
            fix="copy the report somewhere writable and run report there",
        ) from None
    print(report_.summary())
    print(f"plot: {plot_path}")
    return 0


def _load_source(source: str) -> Any:
    from physlink_gym.data import Trajectories

    if source.startswith("minari:"):
        return Trajectories.from_minari(source.removeprefix("minari:"))
    path = Path(source)
    if not path.is_file():
        raise ValidationError(
            got=f"PATH {source!r}, which is not a file",
            expected="a trajectories .npz file (Trajectories.save) or minari:DATASET_ID",
            fix="pass the file written by Trajectories.save / record_trajectories(...).save",
        )
    return Trajectories.load(path)


def _audit_env(spec: str, data: Any) -> Any:
    from physlink_gym._audit import env_from_meta

    if spec == "none":
        return None
    if spec == "auto":  # the recorded env id, when this machine has it
        return env_from_meta(data)
    check_env_id(spec)
    return gym.make(spec)


def audit(args: argparse.Namespace) -> int:
    """``physlink-gym audit``: audit a trajectories file; write it, the report and its plot."""
    import importlib.util

    from physlink_gym import _audit
    from physlink_gym._builtin_names import BUILTIN_INVARIANTS as INVARIANT_NAMES

    names = [n.strip() for n in args.invariants.split(",") if n.strip()]
    unknown = [n for n in names if n not in INVARIANT_NAMES]
    if unknown or not names:
        raise ConfigurationError(
            got=f"--invariants {args.invariants!r}",
            expected=f"comma-separated names from: {', '.join(INVARIANT_NAMES)}",
            fix="pass e.g. --invariants finite,obs_bounds,action_bounds",
        )
    out = Path(args.out)
    check_writable_dir(out, "--out")
    data = _load_source(args.source)
    env = _audit_env(args.env, data)
    audited, report_ = _audit.audit(data, names, env=env, dt=args.dt,
                                    soft_weight=args.soft_weight)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(args.source).stem if not args.source.startswith("minari:") else "minari"
    written = [audited.save(out / f"{name}_audited.npz"), report_.export(out / "compliance.json")]
    if importlib.util.find_spec("matplotlib") is not None:
        report_.plot(out / "compliance.png")
        written.append(out / "compliance.png")
    else:
        print('no plot: matplotlib is not installed (pip install "physlink-gym[viz]")')
    print(report_.summary())
    rows = int((~audited.is_first).sum())
    print(f"{audited.meta['audit']['flagged']} of {rows} transitions newly flagged invalid "
          f"({int((~audited.valid & ~audited.is_first).sum())} invalid in all)")
    for path in written:
        print(f"wrote {path}")
    return 0
