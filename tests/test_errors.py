"""The PhysLinkError hierarchy: message format, class tree, pickling, version-error attributes."""

from __future__ import annotations

import pickle

import pytest

from physlink_gym import PhysLinkError as TopLevelPhysLinkError
from physlink_gym.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointVersionError,
    ConfigurationError,
    PhysLinkError,
    ValidationError,
    format_message,
)

SIMPLE = [
    PhysLinkError,
    ConfigurationError,
    ValidationError,
    CheckpointError,
    CheckpointCorruptError,
]


def test_top_level_export_is_the_same_class():
    assert TopLevelPhysLinkError is PhysLinkError


@pytest.mark.parametrize(
    ("cls", "parents"),
    [
        (ConfigurationError, (PhysLinkError, ValueError)),
        (ValidationError, (PhysLinkError, ValueError)),
        (CheckpointError, (PhysLinkError,)),
        (CheckpointCorruptError, (CheckpointError, PhysLinkError)),
        (CheckpointVersionError, (CheckpointError, PhysLinkError)),
    ],
)
def test_class_tree(cls, parents):
    for parent in parents:
        assert issubclass(cls, parent)
    assert issubclass(cls, Exception)


def test_checkpoint_errors_are_not_value_errors():
    # A corrupt file is not a bad argument: `except ValueError` must not swallow it.
    assert not issubclass(CheckpointError, ValueError)


@pytest.mark.parametrize("cls", SIMPLE)
def test_message_reads_got_expected_fix(cls):
    err = cls(got="joints=0", expected="an int >= 1", fix="pass joints=7")
    assert str(err) == "Got: joints=0. Expected: an int >= 1. Fix: pass joints=7."
    assert (err.got, err.expected, err.fix) == ("joints=0", "an int >= 1", "pass joints=7")


@pytest.mark.parametrize("cls", SIMPLE)
def test_keywords_are_required(cls):
    with pytest.raises(TypeError):
        cls("just a message")


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("a", "b", "c"), "Got: a. Expected: b. Fix: c."),
        (("a.", "b!", "c?"), "Got: a. Expected: b! Fix: c?"),  # no doubled punctuation
        (("  a  ", "b\n", "\tc"), "Got: a. Expected: b. Fix: c."),  # stripped
    ],
)
def test_format_message(parts, expected):
    assert format_message(*parts) == expected


@pytest.mark.parametrize("cls", SIMPLE)
def test_errors_pickle_with_type_message_and_fields(cls):
    err = cls(got="x=1", expected="x=2", fix="use 2")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == str(err)
    assert (back.got, back.expected, back.fix) == ("x=1", "x=2", "use 2")


def test_checkpoint_version_error_attributes_and_message():
    err = CheckpointVersionError(checkpoint_version="0.3.1", current_version="0.1.0")
    assert err.checkpoint_version == "0.3.1"
    assert err.current_version == "0.1.0"
    msg = str(err)
    assert msg.startswith("Got: a checkpoint written by physlink_gym 0.3.1.")
    assert "Expected: a checkpoint from physlink_gym 0.1.x (this is 0.1.0)." in msg
    assert "Fix: load it with physlink_gym==0.3.1" in msg
    with pytest.raises(CheckpointError):
        raise err


def test_checkpoint_version_error_pickles_with_attributes():
    err = CheckpointVersionError("1.2.0", "0.1.0")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is CheckpointVersionError
    assert (back.checkpoint_version, back.current_version) == ("1.2.0", "0.1.0")
    assert str(back) == str(err)
