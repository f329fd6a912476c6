"""Configuration models: defaults, coercions and validation messages."""

from __future__ import annotations

import math
import typing

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from wsclient import (
    ApiKeyAuth,
    Backend,
    BearerAuth,
    HealthCheckConfig,
    PoolConfig,
    WebSocketPool,
)
from wsclient.config import redact_headers, redact_text, redact_url


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


def _float_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every float-typed option of ``model``, nested models included, as a path."""
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        args = typing.get_args(annotation) or (annotation,)
        if float in args:
            found.append((*prefix, name))
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg is not Backend:
                found.extend(_float_fields(arg, (*prefix, name)))
    return found


FLOAT_FIELDS = _float_fields(PoolConfig)


def _nest(path: tuple[str, ...], value: object) -> dict[str, object]:
    options: dict[str, object] = {path[-1]: value}
    for name in reversed(path[:-1]):
        options = {name: options}
    return options


def test_float_field_discovery_sees_the_known_durations() -> None:
    """The walk below really covers nested models (else the next test proves nothing)."""
    for path in [
        ("heartbeat", "interval"),
        ("health_check", "timeout"),
        ("circuit_breaker", "recovery_timeout"),
        ("reconnect", "max_delay"),
        ("connect_timeout",),
        ("slow_start",),
        ("max_lifetime",),
    ]:
        assert path in FLOAT_FIELDS


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("path", FLOAT_FIELDS, ids=".".join)
def test_every_float_option_must_be_finite(path: tuple[str, ...], value: float) -> None:
    """inf/nan in any duration, ratio or factor is a ValidationError naming that field.

    (inf used to pass "> 0" and then fail every connect with OverflowError.)
    """
    with pytest.raises(ValidationError) as info:
        PoolConfig(**_nest(path, value))
    assert [tuple(str(p) for p in e["loc"][: len(path)]) for e in info.value.errors()] == [path]


@pytest.mark.parametrize("value", [math.inf, math.nan])
@pytest.mark.parametrize("name", ["connect_timeout", "close_timeout"])
def test_backend_overrides_must_be_finite_too(name: str, value: float) -> None:
    with pytest.raises(ValidationError, match=name):
        Backend(url="ws://h/ws", **{name: value})


@pytest.mark.parametrize("section", ["health_check", "heartbeat"])
def test_probe_and_heartbeat_intervals_are_at_least_10_ms(section: str) -> None:
    """1e-9 s would be a thousand probes a second: refused, 0.01 s is the floor."""
    for bad in (1e-9, 0.0099):
        with pytest.raises(ValidationError) as info:
            PoolConfig(**{section: {"interval": bad}})
        assert info.value.errors()[0]["loc"] == (section, "interval")
        assert "0.01" in str(info.value)
    assert getattr(PoolConfig(**{section: {"interval": 0.01}}), section).interval == 0.01


def test_heartbeat_can_still_be_disabled_with_none() -> None:
    assert PoolConfig(heartbeat={"interval": None}).heartbeat.interval is None


@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        ({"X-Trace": "a\r\nInjected: yes"}, "header 'X-Trace': value contains CR, LF"),
        ({"X-Trace": "a\nb"}, "header 'X-Trace'"),
        ({"X-Trace": "nul\x00"}, "header 'X-Trace'"),
        ({"X-Trace": "del\x7f"}, "header 'X-Trace'"),
        ({"Bad Name": "v"}, "header name 'Bad Name' is not a valid HTTP token"),
        ({"X-A\r\nX-B": "v"}, "is not a valid HTTP token"),
        ({"": "v"}, "header name '' is not a valid HTTP token"),
        ({"X-Ok:": "v"}, "is not a valid HTTP token"),
    ],
)
def test_headers_with_control_characters_or_bad_names_are_refused(
    headers: dict[str, str], needle: str
) -> None:
    """Refused at construction (pool and backend), naming the header, never its value."""
    for build in (
        lambda: PoolConfig(headers=headers),
        lambda: Backend(url="ws://h/ws", headers=headers),
    ):
        with pytest.raises(ValidationError) as info:
            build()
        assert info.value.errors()[0]["loc"] == ("headers",)
        assert needle in str(info.value)
        assert "Injected" not in str(info.value)


def test_tab_in_a_header_value_is_allowed() -> None:
    """HTAB is legal inside a field value (RFC 9110); only the other controls are not."""
    assert PoolConfig(headers={"X-Tabbed": "a\tb"}).headers == {"X-Tabbed": "a\tb"}


def test_credentials_with_control_characters_are_refused_without_echo() -> None:
    """A token or key with CR/LF would inject headers: refused, secret not echoed."""
    with pytest.raises(ValidationError) as info:
        BearerAuth(token=SecretStr("s3cret\r\nX-Evil: 1"))
    assert info.value.errors()[0]["loc"] == ("token",)
    with pytest.raises(ValidationError) as info2:
        ApiKeyAuth(key=SecretStr("k3y\n"))
    assert info2.value.errors()[0]["loc"] == ("key",)
    with pytest.raises(ValidationError, match="header name 'X Key'"):
        ApiKeyAuth(key=SecretStr("k"), header="X Key")
    for err in (info.value, info2.value):
        assert "s3cret" not in str(err)
        assert "k3y" not in str(err)


@pytest.mark.parametrize("protocol", ["a,b", "chat v2", "x\r\ny", ""])
def test_subprotocols_must_be_tokens(protocol: str) -> None:
    with pytest.raises(ValidationError, match="subprotocol") as info:
        PoolConfig(protocols=[protocol])
    assert info.value.errors()[0]["loc"] == ("protocols",)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ws://h:1/ws", "ws://h:1/ws"),
        ("ws://h/ws?token=s3cret", "ws://h/ws?token=***"),
        ("wss://h/ws?a=1&token=s3cret&flag", "wss://h/ws?a=***&token=***&***"),
        ("ws://h/ws#s3cret", "ws://h/ws#***"),
        ("ws://user:s3cret@h/ws", "ws://***@h/ws"),
        ("ws://h/p@th?x=s3cret", "ws://h/p@th?x=***"),
        ("http://u:s3cret@h?x=s3cret#s3cret", "http://***@h?x=***#***"),
        ("not a url ?s3cret", "not a url ?***"),
    ],
)
def test_redact_url_masks_query_values_fragment_and_userinfo(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_masks_every_url_in_a_message() -> None:
    text = "401, message='Invalid response status', url='ws://h:1/ws?token=s3cret'"
    assert (
        redact_text(text) == "401, message='Invalid response status', url='ws://h:1/ws?token=***'"
    )


def test_backend_with_a_token_in_its_url_shows_it_nowhere() -> None:
    """Default id, repr and str of a Backend (and of the pool config) hide the query value."""
    url = "ws://127.0.0.1:1/ws?token=s3cret-QRS"
    backend = Backend(url)
    assert backend.url == url  # the real URL is still the one dialled
    assert backend.id == "ws://127.0.0.1:1/ws?token=***"
    config = PoolConfig(backends=[url])
    for text in (repr(backend), str(backend), repr(config), str(config)):
        assert "s3cret" not in text


def test_credential_like_subprotocols_are_masked_in_reprs() -> None:
    """A token passed as a subprotocol (a Kubernetes-style API does) is not shown."""
    secret = "base64url.bearer.authorization.k8s.io.s3cret"
    config = PoolConfig(protocols=["chat.v2", secret], backends=[{"url": "ws://h/ws"}])
    backend = Backend(url="ws://h/ws", protocols=[secret, "chat.v1"])
    for text in (repr(config), str(config), repr(backend)):
        assert "s3cret" not in text
    assert "chat.v2" in repr(config)
    assert "chat.v1" in repr(backend)
    assert config.protocols == ("chat.v2", secret)  # still offered as configured


def test_auth_models_take_the_secret_positionally_or_by_keyword() -> None:
    """ApiKeyAuth(key, header=...) as the README writes it, BearerAuth(token), str or SecretStr."""
    assert ApiKeyAuth("k-1", header="X-Key").headers() == {"X-Key": "k-1"}
    assert ApiKeyAuth(key=SecretStr("k-1")).headers() == {"X-API-Key": "k-1"}
    assert BearerAuth("t-1").headers() == {"Authorization": "Bearer t-1"}
    assert PoolConfig(auth={"key": "k-1", "header": "X-Key"}).auth == ApiKeyAuth("k-1", "X-Key")
    with pytest.raises(TypeError, match="both positionally and by keyword"):
        ApiKeyAuth("k-1", key="k-2")  # type: ignore[misc]
    with pytest.raises(ValidationError, match="header"):
        ApiKeyAuth("k-1", header="X Key")
