"""Configuration from files and the environment: formats, precedence, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from wsclient import ApiKeyAuth, BearerAuth, PoolConfig

TOML = """
load_balancing = "round-robin"
max_connections = 10
acquire_timeout = 2.5
protocols = ["chat.v1"]
auth = { key = "s3cr3t-key", header = "X-Service-Key" }

[health_check]
interval = 0.5
path = "/health"

[headers]
X-Tenant = "blue"

[[backends]]
id = "a"
url = "ws://127.0.0.1:9001/ws"
weight = 2

[[backends]]
url = "ws://127.0.0.1:9002/ws"
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_from_file_reads_toml_into_the_same_model(tmp_path: Path) -> None:
    """A TOML file gives the PoolConfig the same keywords would give."""
    loaded = PoolConfig.from_file(write(tmp_path, "pool.toml", TOML))
    expected = PoolConfig(
        load_balancing="round-robin",
        max_connections=10,
        acquire_timeout=2.5,
        protocols=("chat.v1",),
        auth=ApiKeyAuth(key="s3cr3t-key", header="X-Service-Key"),
        health_check={"interval": 0.5, "path": "/health"},
        headers={"X-Tenant": "blue"},
        backends=[
            {"id": "a", "url": "ws://127.0.0.1:9001/ws", "weight": 2},
            "ws://127.0.0.1:9002/ws",
        ],
    )
    assert loaded == expected
    assert loaded.health_check.timeout == 5.0  # unset nested options keep their defaults
    assert [b.id for b in loaded.backends] == ["a", "ws://127.0.0.1:9002/ws"]


def test_from_file_reads_json_and_a_string_auth_is_a_bearer_token(tmp_path: Path) -> None:
    """JSON works the same; a plain string auth is a bearer token, as in code."""
    data = {"backends": ["ws://127.0.0.1:9001/ws"], "auth": "tok", "reconnect": {"max_delay": 3}}
    loaded = PoolConfig.from_file(write(tmp_path, "pool.json", json.dumps(data)))
    assert isinstance(loaded.auth, BearerAuth)
    assert loaded.auth.token.get_secret_value() == "tok"
    assert loaded.reconnect.max_delay == 3.0


def test_from_file_errors_are_the_models_and_name_the_file(tmp_path: Path) -> None:
    """Bad values give the keyword path's messages, plus a note naming the file."""
    path = write(tmp_path, "pool.toml", "max_connections = 0\n[health_check]\ninterval = 0.001\n")
    with pytest.raises(ValidationError) as from_file:
        PoolConfig.from_file(path)
    with pytest.raises(ValidationError) as from_code:
        PoolConfig(max_connections=0, health_check={"interval": 0.001})
    assert str(from_file.value) == str(from_code.value)
    assert from_file.value.__notes__ == [
        f"max_connections: from file {path}",
        f"health_check.interval: from file {path}",
    ]


def test_from_file_typo_is_rejected_not_ignored(tmp_path: Path) -> None:
    """An unknown option in a file is an error, as it is as a keyword."""
    with pytest.raises(ValidationError, match="max_conections"):
        PoolConfig.from_file(write(tmp_path, "pool.toml", "max_conections = 3\n"))


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("pool.toml", 'auth = "tok\nmax = [', "not valid TOML"),
        ("pool.json", '{"auth": "tok", ', "not valid JSON: Expecting property name"),
        ("pool.json", '["ws://h/ws"]', "top level must be a table of options"),
        ("pool.yaml", "auth: tok", "unknown configuration format '.yaml'"),
    ],
)
def test_unreadable_files_raise_value_error_naming_the_file_not_its_contents(
    tmp_path: Path, name: str, text: str, needle: str
) -> None:
    """Syntax errors name the file and the place; the contents (a token) never show."""
    path = write(tmp_path, name, text)
    with pytest.raises(ValueError) as info:
        PoolConfig.from_file(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)
    assert "tok" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        PoolConfig.from_file(tmp_path / "absent.toml")
