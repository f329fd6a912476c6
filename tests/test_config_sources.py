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


def test_from_env_reads_prefixed_variables_nested_json_and_null(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """WSCLIENT_* variables map to fields; __ reaches nested options; JSON; null."""
    monkeypatch.setenv("WSCLIENT_MAX_CONNECTIONS", "7")
    monkeypatch.setenv("WSCLIENT_HEALTH_CHECK__INTERVAL", "0.5")
    monkeypatch.setenv("wsclient_heartbeat__interval", "null")  # names are case-insensitive
    monkeypatch.setenv("WSCLIENT_ACQUIRE_TIMEOUT", "null")
    monkeypatch.setenv(
        "WSCLIENT_BACKENDS",
        '["ws://127.0.0.1:9001/ws", {"id": "b", "url": "ws://127.0.0.1:9002/ws"}]',
    )
    monkeypatch.setenv("WSCLIENT_HEADERS", '{"X-Tenant": "blue"}')
    monkeypatch.setenv("WSCLIENT_AUTH", "tok")
    loaded = PoolConfig.from_env()
    assert loaded.max_connections == 7
    assert loaded.health_check.interval == 0.5
    assert loaded.health_check.timeout == 5.0
    assert loaded.heartbeat.interval is None
    assert loaded.acquire_timeout is None
    assert [b.id for b in loaded.backends] == ["ws://127.0.0.1:9001/ws", "b"]
    assert loaded.headers == {"X-Tenant": "blue"}
    assert isinstance(loaded.auth, BearerAuth)


def test_auth_from_nested_variables_is_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """WSCLIENT_AUTH__KEY / __HEADER build an ApiKeyAuth, as the dict form does."""
    monkeypatch.setenv("WSCLIENT_AUTH__KEY", "k-1")
    monkeypatch.setenv("WSCLIENT_AUTH__HEADER", "X-Service-Key")
    assert PoolConfig.from_env().auth == ApiKeyAuth("k-1", header="X-Service-Key")


def test_environment_errors_are_the_models_and_name_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bad value from the environment: the model's message, a note naming the variable."""
    monkeypatch.setenv("WSCLIENT_MAX_CONNECTIONS", "0")
    monkeypatch.setenv("WSCLIENT_HEALTH_CHECK__INTERVAL", "soon")
    with pytest.raises(ValidationError) as from_env:
        PoolConfig.from_env()
    with pytest.raises(ValidationError) as from_code:
        PoolConfig(max_connections="0", health_check={"interval": "soon"})
    assert str(from_env.value) == str(from_code.value)
    assert from_env.value.__notes__ == [
        "max_connections: from environment variable WSCLIENT_MAX_CONNECTIONS",
        "health_check.interval: from environment variable WSCLIENT_HEALTH_CHECK__INTERVAL",
    ]


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("WSCLIENT_MAX_CONECTIONS", "did you mean WSCLIENT_MAX_CONNECTIONS?"),
        ("WSCLIENT_HEALTH_CHECK__INTERVALL", "WSCLIENT_HEALTH_CHECK__INTERVALL names no"),
        ("WSCLIENT_MAX_CONNECTIONS__X", "WSCLIENT_MAX_CONNECTIONS__X names no"),
        ("WSCLIENT_AUTH__KEYS", "WSCLIENT_AUTH__KEYS names no"),
        ("WSCLIENT_BACKENDS__0__URL", "WSCLIENT_BACKENDS__0__URL names no"),
    ],
)
def test_unknown_variables_are_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, needle: str
) -> None:
    """A WSCLIENT_ variable that names no option is an error, not silently ignored."""
    monkeypatch.setenv(name, "3")
    with pytest.raises(ValueError, match=needle):
        PoolConfig.from_env()


def test_bad_json_in_a_variable_names_it_and_hides_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A table that is not JSON: the variable is named; the value (a token) is not shown."""
    monkeypatch.setenv("WSCLIENT_HEADERS", '{"Authorization": "Bearer s3cr3t"')
    with pytest.raises(ValueError) as info:
        PoolConfig.from_env()
    assert "WSCLIENT_HEADERS: not valid JSON" in str(info.value)
    assert "s3cr3t" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_precedence_is_arguments_then_environment_then_file_then_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load(): explicit > env > file > defaults; nested tables merge key by key."""
    path = write(
        tmp_path,
        "pool.toml",
        "min_connections = 1\nmax_connections = 5\nidle_timeout = 9\n"
        '[health_check]\ninterval = 2\npath = "/health"\n',
    )
    monkeypatch.setenv("WSCLIENT_MAX_CONNECTIONS", "6")
    monkeypatch.setenv("WSCLIENT_IDLE_TIMEOUT", "8")
    monkeypatch.setenv("WSCLIENT_HEALTH_CHECK__INTERVAL", "3")
    loaded = PoolConfig.load(path, idle_timeout=7)
    assert loaded.min_connections == 1  # file
    assert loaded.max_connections == 6  # environment over file
    assert loaded.idle_timeout == 7  # argument over environment
    assert loaded.health_check.interval == 3  # environment, one nested key ...
    assert loaded.health_check.path == "/health"  # ... the file's others kept
    assert loaded.acquire_timeout == 30.0  # default
    assert PoolConfig.from_file(path).max_connections == 5  # from_file alone: no environment


def test_load_notes_name_the_layer_that_won(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each error's note names the source of the value that was used."""
    path = write(tmp_path, "pool.toml", "max_connections = 0\nidle_timeout = -1\n")
    monkeypatch.setenv("WSCLIENT_IDLE_TIMEOUT", "-2")
    with pytest.raises(ValidationError) as info:
        PoolConfig.load(path, acquire_timeout=-3)
    assert info.value.__notes__ == [
        "max_connections: from file " + str(path),
        "acquire_timeout: from the arguments",
        "idle_timeout: from environment variable WSCLIENT_IDLE_TIMEOUT",
    ]
