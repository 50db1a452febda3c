"""The ``physlink-gym`` command line (also ``python -m physlink_gym``).

Every subcommand is two functions in this module::

    def _add_<name>_parser(subparsers) -> None   # declare the arguments, set_defaults(func=...)
    def _cmd_<name>(args) -> int                 # run it, return the exit code

plus one entry in :data:`_COMMANDS`. Commands import heavy modules (torch, the agent) inside
``_cmd_<name>`` so that ``physlink-gym --help`` stays fast.

Bad input never prints a traceback: usage errors and :class:`~physlink_gym.errors.PhysLinkError`
become one line on stderr, ``physlink-gym: error: ...``, with exit code 2 (usage) or 1 (error).

Example:
    >>> main(["doctor", "--quiet"]) in (0, 1)
    True
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from physlink_gym._builtin_names import BUILTIN_INVARIANTS
from physlink_gym._version import __version__
from physlink_gym.errors import PhysLinkError

__all__ = ["build_parser", "main"]

PROG = "physlink-gym"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_Subparsers = Any  # argparse._SubParsersAction is private; keep the alias in one place


class _UsageError(Exception):
    """Raised by the parser instead of printing usage and calling ``sys.exit``."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


# --- doctor ----------------------------------------------------------------------------------


_HELP = argparse.ArgumentDefaultsHelpFormatter  # every option's --help shows its default


def _add_doctor_parser(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check Python, torch, CUDA and packages; exit 0 on GO, 1 on NO-GO",
        description="Check that this machine can run physlink_gym. Exit code 0 on GO, 1 on NO-GO.",
        formatter_class=_HELP,
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the report as JSON")
    output.add_argument("--quiet", action="store_true", help="print nothing; use the exit code")
    parser.set_defaults(func=_cmd_doctor)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from physlink_gym.diagnostics import doctor

    report = doctor(print_table=not (args.json or args.quiet))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    return EXIT_OK if report.verdict == "GO" else EXIT_ERROR


# --- train / evaluate / report -------------------------------------------------------------------

INVARIANT_NAMES = BUILTIN_INVARIANTS  # the names --invariants takes


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _config_item(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value  # a bare string, e.g. --set compute_dtype=bfloat16
    return key.strip(), parsed


def _add_train_parser(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="wrap an env with invariants and train DreamerV3 (TensorBoard logs)",
        description="Wrap ENV_ID in InvariantWrapper, train DreamerV3 with a progress bar, write "
        "TensorBoard logs, a checkpoint and the compliance report, then print its summary.",
        formatter_class=_HELP,
    )
    parser.add_argument("--env", required=True, metavar="ENV_ID", help="Gymnasium env id")
    parser.add_argument("--invariants", default="auto", metavar="NAMES",
                        help="comma-separated invariant names, or 'auto' (finite, action_bounds, "
                        "plus sim_health on MuJoCo envs and pendulum_energy on Pendulum-v1); "
                        f"known: {', '.join(INVARIANT_NAMES)}")
    parser.add_argument("--timesteps", type=_positive_int, default=10_000, metavar="N",
                        help="env steps to train for")
    parser.add_argument("--preset", default="1m",
                        help="debug | small (short runs) | 1m | 12m | 25m | 50m | 200m")
    parser.add_argument("--logdir", default="runs/", help="TensorBoard log folder")
    parser.add_argument("--n-envs", type=_positive_int, default=1, metavar="K",
                        help="parallel envs (SB3 DummyVecEnv)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of torch, numpy and the envs")
    parser.add_argument("--train-ratio", type=float, default=None,
                        help="replayed steps per env step (default: the preset's)")
    parser.add_argument("--learning-starts", type=int, default=1024, metavar="N",
                        help="env steps collected before the first update")
    parser.add_argument("--set", dest="config", type=_config_item, action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a DreamerV3 config field (value as JSON), repeatable; "
                        "e.g. --set lr=3e-4 --set warmup=100")
    parser.add_argument("--save", default=None, metavar="PATH",
                        help="checkpoint path (default: <run folder>/model.zip)")
    parser.add_argument("--eval-episodes", type=int, default=10, metavar="N",
                        help="deterministic episodes evaluated before and after training on the "
                        "plain env (0: skip)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from physlink_gym import _commands

    return _commands.train(args)


def _add_evaluate_parser(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a saved DreamerV3 checkpoint on an env",
        description="Run N deterministic episodes of a checkpoint and print the mean return.",
        formatter_class=_HELP,
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a file saved by train")
    parser.add_argument("--env", required=True, metavar="ENV_ID", help="Gymnasium env id")
    parser.add_argument("--episodes", type=_positive_int, default=10, metavar="N",
                        help="episodes to average")
    parser.add_argument("--seed", type=int, default=0, help="seed of the env")
    parser.add_argument("--stochastic", action="store_true", help="sample actions")
    parser.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from physlink_gym import _commands

    return _commands.evaluate(args)


def _add_report_parser(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="print a compliance report and write its plot",
        description="Print the compliance summary of a run folder (its compliance.json) or of a "
        "report JSON file, and write compliance.png beside it.",
        formatter_class=_HELP,
    )
    parser.add_argument("source", metavar="RUN_DIR_OR_JSON",
                        help="a run folder (its compliance.json) or a report JSON file")
    parser.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from physlink_gym import _commands

    return _commands.report(args)


def _add_audit_parser(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "audit", help="check collected trajectories offline against invariants",
        description="Run invariants over every transition of a trajectories file (written by "
        "Trajectories.save or record_trajectories) or a local Minari dataset (minari:ID), then "
        "write the audited file, compliance.json and compliance.png to --out and print the "
        "summary.",
        formatter_class=_HELP,
    )
    parser.add_argument("source", metavar="PATH",
                        help="a trajectories .npz file, or minari:DATASET_ID")
    parser.add_argument("--invariants", default="finite,obs_bounds,action_bounds",
                        metavar="NAMES", help="comma-separated invariant names; known: "
                        f"{', '.join(INVARIANT_NAMES)}")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--env", default="auto", metavar="ENV_ID",
                        help="env whose spaces and parameters the invariants use ('auto': the "
                        "env id recorded in the data, when registered; 'none': no env)")
    parser.add_argument("--dt", type=float, default=None,
                        help="seconds per step (default: recorded in the data, else the env's)")
    parser.add_argument("--soft-weight", type=float, default=1.0,
                        help="weight of the soft penalty in the penalised reward")
    parser.set_defaults(func=_cmd_audit)


def _cmd_audit(args: argparse.Namespace) -> int:
    from physlink_gym import _commands

    return _commands.audit(args)


# --- registry ----------------------------------------------------------------------------------

# To add a command: write _add_<name>_parser and _cmd_<name> above, then list the adder here.
_COMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    _add_train_parser, _add_evaluate_parser, _add_report_parser, _add_audit_parser,
    _add_doctor_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every registered subcommand."""
    parser = _Parser(
        prog=PROG,
        description="Physical-invariant checking for Gymnasium envs and a DreamerV3 agent.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_parser in _COMMANDS:
        add_parser(subparsers)
    return parser


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (``physlink-gym --help`` lists commands).

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        0 on success, 1 on a failed check or a :class:`PhysLinkError`, 2 on a usage error,
        130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        return _fail(f"{exc} (see '{PROG} --help')", EXIT_USAGE)
    except SystemExit as exc:  # --help and --version exit on purpose
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    try:
        code: int = args.func(args)
    except PhysLinkError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    return code
