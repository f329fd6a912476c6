"""Configuration models: defaults, coercions and validation messages."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from wsclient import (
    ApiKeyAuth,
    Backend,
    BearerAuth,
    HealthCheckConfig,
    PoolConfig,
    WebSocketPool,
)
from wsclient.config import redact_headers


def test_plain_url_becomes_backend_with_url_id_and_weight_one() -> None:
    """A URL string in backends= gives id = url and weight = 1."""
    cfg = PoolConfig(backends=["ws://127.0.0.1:1/ws"])
    assert cfg.backends[0].id == "ws://127.0.0.1:1/ws"
    assert cfg.backends[0].weight == 1


def test_nested_options_accept_dicts_and_models() -> None:
    """Nested configs work as dicts or as models."""
    a = PoolConfig(health_check={"interval": 2, "path": "/health"})
    b = PoolConfig(health_check=HealthCheckConfig(interval=2, path="/health"))
    assert a.health_check == b.health_check
    assert a.health_check.unhealthy_threshold == 3


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"min_connections": 5, "max_connections": 2}, "min_connections (5) > max_connections (2)"),
        ({"backends": ["http://127.0.0.1/ws"]}, "url scheme must be ws:// or wss://"),
        ({"backends": [{"url": "ws://h/ws", "weight": 0}]}, "weight"),
        (
            {"backends": [{"id": "a", "url": "ws://h/ws"}, {"id": "a", "url": "ws://g/ws"}]},
            "duplicate backend id 'a'",
        ),
        ({"load_balancing": "fastest"}, "unknown load_balancing 'fastest'"),
        ({"backends": ["ws://user:pw@h/ws"]}, "must not contain credentials"),
        ({"acquire_timeout": -1}, "acquire_timeout"),
        ({"health_check": {"path": "health"}}, "path must start with '/'"),
        ({"reconnect": {"initial_delay": 5, "max_delay": 1}}, "reconnect.max_delay (1.0) <"),
        ({"max_connections": 0}, "max_connections"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_bad_values_raise_validation_error_naming_the_field(
    kwargs: dict[str, object], needle: str
) -> None:
    """Each bad value raises ValidationError whose text names what was wrong."""
    with pytest.raises(ValidationError) as info:
        PoolConfig(**kwargs)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_pool_constructor_validates_before_any_socket() -> None:
    """WebSocketPool(...) raises at construction, no event loop needed."""
    with pytest.raises(ValidationError, match="min_connections"):
        WebSocketPool(backends=["ws://127.0.0.1:1/ws"], min_connections=3, max_connections=1)


def test_pool_accepts_config_model_and_overrides() -> None:
    """WebSocketPool(config, **overrides) merges keywords over the model."""
    cfg = PoolConfig(backends=["ws://127.0.0.1:1/ws"], max_connections=7)
    pool = WebSocketPool(cfg, min_connections=0)
    assert pool.config.max_connections == 7
    assert pool.config.min_connections == 0
    assert WebSocketPool(cfg).config is cfg


def test_string_auth_is_a_bearer_token_and_hidden_in_repr() -> None:
    """auth='tok' becomes a BearerAuth whose secret never shows in repr."""
    cfg = PoolConfig(auth="s3cr3t-token", headers={"Authorization": "Bearer xyz", "X-Trace": "1"})
    assert isinstance(cfg.auth, BearerAuth)
    assert cfg.auth.headers() == {"Authorization": "Bearer s3cr3t-token"}
    text = repr(cfg) + str(cfg)
    assert "s3cr3t-token" not in text
    assert "xyz" not in text
    assert "X-Trace" in text


def test_backend_overrides_merge_with_pool_defaults() -> None:
    """A Backend's own options override the pool's for that backend only."""
    cfg = PoolConfig(
        headers={"X-A": "1"},
        connect_timeout=3,
        backends=[Backend(url="ws://h/ws", headers={"X-B": "2"}, connect_timeout=1)],
    )
    opts = cfg.backends[0].connection_options(cfg.connection_defaults())
    assert opts.headers == {"X-A": "1", "X-B": "2"}
    assert opts.connect_timeout == 1
    assert cfg.connection_defaults().connect_timeout == 3


def test_api_key_auth_header_and_redaction() -> None:
    """ApiKeyAuth sends its header; redact_headers masks credential headers."""
    auth = ApiKeyAuth(key=SecretStr("k-123"), header="X-Api-Key")
    assert auth.headers() == {"X-Api-Key": "k-123"}
    assert "k-123" not in repr(auth)
    masked = redact_headers({"X-Api-Key": "k-123", "Cookie": "c", "Accept": "x"})
    assert masked["Accept"] == "x"
    assert "k-123" not in masked.values() and "c" not in masked.values()


def test_backend_positional_url() -> None:
    """Backend('ws://...') works positionally."""
    backend = Backend("ws://127.0.0.1:9/ws", weight=3)
    assert backend.id == backend.url and backend.weight == 3
