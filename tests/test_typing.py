"""Typing for users: typed keyword options and events, checked by ``mypy --strict``.

The TypedDicts and event Literals are written out by hand (a type checker
cannot derive them from pydantic models); the unit tests here keep them equal
to the models and to ``EVENTS``, so an option added to ``PoolConfig`` without
its TypedDict key fails here. The mypy test type-checks two user programs in
``tests/typing_programs/`` as a user's project would (``--strict``, no
pydantic plugin): one must pass, the other must fail on each marked line.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from wsclient import (
    Backend,
    BackendOptions,
    BackoffConfig,
    BackoffOptions,
    CircuitBreakerConfig,
    CircuitBreakerOptions,
    ConnectionOptions,
    ConnectionOptionsDict,
    HealthCheckConfig,
    HealthCheckOptions,
    HeartbeatConfig,
    HeartbeatOptions,
    PoolConfig,
    PoolOptions,
    WebSocketPool,
    connect,
    listeners,
)
from wsclient import event_names as ev

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = Path(__file__).resolve().parent / "typing_programs"


@pytest.mark.parametrize(
    ("typed_dict", "model"),
    [
        (PoolOptions, PoolConfig),
        (ConnectionOptionsDict, ConnectionOptions),
        (BackendOptions, Backend),
        (HealthCheckOptions, HealthCheckConfig),
        (CircuitBreakerOptions, CircuitBreakerConfig),
        (BackoffOptions, BackoffConfig),
        (HeartbeatOptions, HeartbeatConfig),
    ],
)
def test_typed_dict_keys_are_the_model_fields(typed_dict: Any, model: type[BaseModel]) -> None:
    """Every model field has its TypedDict key and nothing else does."""
    keys = typed_dict.__required_keys__ | typed_dict.__optional_keys__
    assert sorted(keys) == sorted(model.model_fields)
    required = {name for name, field in model.model_fields.items() if field.is_required()}
    assert typed_dict.__required_keys__ == required


def test_pool_and_connect_keywords_are_typed() -> None:
    """WebSocketPool(**options) and connect(**options) unpack the TypedDicts."""
    pool_hints = typing.get_type_hints(WebSocketPool.__init__, include_extras=True)
    connect_hints = typing.get_type_hints(connect, include_extras=True)
    assert pool_hints["options"] == typing.Unpack[PoolOptions]
    assert connect_hints["options"] == typing.Unpack[ConnectionOptionsDict]


LISTENER_OF = {
    ev.BackendEvent: listeners.BackendListener,
    ev.BackendUnhealthyEvent: listeners.BackendUnhealthyListener,
    ev.BackendEjectedEvent: listeners.BackendEjectedListener,
    ev.ConnectionOpenEvent: listeners.ConnectionOpenListener,
    ev.ConnectionClosedEvent: listeners.ConnectionClosedListener,
    ev.IdleMessageEvent: listeners.IdleMessageListener,
}


def _names(literal: Any) -> list[str]:
    # A union of Literals (EventName) or one Literal: the strings in it.
    names: list[str] = []
    for arg in typing.get_args(literal):
        names.extend(_names(arg) if typing.get_args(arg) else [arg])
    return names


def test_event_literals_are_the_events_with_their_arguments() -> None:
    """The Literal groups cover EVENTS exactly; each listener type takes that event's args."""
    assert sorted(_names(ev.EventName)) == sorted(ev.EVENTS)
    grouped = [name for group in LISTENER_OF for name in typing.get_args(group)]
    assert sorted(grouped) == sorted(ev.EVENTS)
    for group, listener in LISTENER_OF.items():
        parameters, _ = typing.get_args(listener)
        for name in typing.get_args(group):
            documented = ev.EVENTS[name].strip("()").split(", ")
            assert len(parameters) == len(documented), name


def test_on_overloads_cover_every_group() -> None:
    """One overload of on() per event group, so no event falls back to an untyped one."""
    overloads = typing.get_overloads(listeners.EventSource.on)
    assert len(overloads) == len(LISTENER_OF)
    assert issubclass(WebSocketPool, listeners.EventSource)
    assert inspect.signature(WebSocketPool.on).parameters.keys() == {"self", "event", "callback"}


def _mypy(tmp_path: Path, *programs: Path) -> list[str]:
    # A user's project: its own directory, `--strict`, no pydantic plugin. The
    # cache is kept beside the repo's own, so a second run takes a second.
    (tmp_path / "mypy.ini").write_text("[mypy]\n")
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(tmp_path / "mypy.ini"),
            "--cache-dir",
            str(ROOT / ".mypy_cache" / "user-programs"),
            "--no-error-summary",
            "--hide-error-context",
            *map(str, programs),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode in (0, 1), result.stderr
    return [line for line in result.stdout.splitlines() if ": error: " in line]


def test_mypy_strict_accepts_the_user_program_and_rejects_each_typo(tmp_path: Path) -> None:
    """The good program type-checks; each line marked in the other, and only those, fails."""
    good = PROGRAMS / "user_program.py"
    bad = PROGRAMS / "user_program_with_typos.py"
    errors = _mypy(tmp_path, good, bad)
    assert [line for line in errors if good.name in line] == []
    lines = bad.read_text().splitlines()
    expected = {
        number + 1: line.split("# mypy: ", 1)[1]
        for number, line in enumerate(lines, start=1)
        if "# mypy: " in line
    }
    assert len(expected) >= 6
    reported: dict[int, str] = {}
    for line in errors:
        match = re.search(rf"{re.escape(bad.name)}:(\d+): error: (.*)", line)
        assert match, line
        reported[int(match[1])] = reported.get(int(match[1]), "") + match[2]
    assert sorted(reported) == sorted(expected), errors
    for number, text in expected.items():
        assert text in reported[number], (number, reported[number])
