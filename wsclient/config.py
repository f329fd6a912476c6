"""Configuration models: every option, its default and its validation.

All models are pydantic v2 and frozen-by-convention (the pool copies what it
needs at start). Bad values raise ``pydantic.ValidationError`` (a
``ValueError``) naming the field, before any socket opens. Nested options
accept a model or a plain dict. Secrets (tokens, API keys, auth headers) are
kept out of ``repr`` so they never reach logs.

Why one file of about 620 lines: it is the one place every option and its
rule is written down (SPEC §1), read top to bottom like the README's option
table; the sections follow that table.
"""

from __future__ import annotations

import importlib.util
import os
import re
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Self, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)
from yarl import URL

AuthProvider: TypeAlias = Callable[[], Awaitable[Mapping[str, str]]]

#: Header names whose values are never shown in repr, logs or errors.
SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-auth-token"}
)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return ``headers`` with the values of credential-bearing headers masked."""
    return {
        name: "**********" if _is_sensitive_header(name) else value
        for name, value in headers.items()
    }


#: Shown instead of anything redacted.
REDACTED = "***"

_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: object) -> str:
    """``url`` as it may be shown: query values, fragment and userinfo masked.

    ``wss://u:p@h/ws?token=abc&v=2#x`` becomes ``wss://***@h/ws?token=***&v=***#***``.
    Every repr, log line and error message that shows a URL goes through this; the
    real URL is still the one dialled. Works on text that does not parse as a URL
    (it is plain string surgery), so a malformed URL cannot leak either.
    """
    text = str(url)
    text, hash_, _fragment = text.partition("#")
    text, question, query = text.partition("?")
    scheme, sep, rest = text.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            authority = REDACTED + "@" + authority.rpartition("@")[2]
        text = f"{scheme}{sep}{authority}{slash}{path}"
    elif "@" in text:  # no scheme: still never show what precedes an '@'
        text = REDACTED + "@" + text.rpartition("@")[2]
    if question:
        fields = [
            f"{name}={REDACTED}" if has_value else (REDACTED if name else "")
            for name, has_value, _ in (field.partition("=") for field in query.split("&"))
        ]
        text += "?" + "&".join(fields)
    if hash_:
        text += "#" + REDACTED
    return text


def redact_text(text: str) -> str:
    """``text`` with every ``scheme://...`` URL in it passed through :func:`redact_url`.

    For messages built from third-party exceptions (aiohttp's include the URL).
    """
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


# RFC 9110 token characters: what a header name or a subprotocol may consist of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _has_control_chars(value: str) -> bool:
    # HTAB is allowed inside a field value; every other C0 control and DEL is not
    # (CR/LF would end the header and let the rest be read as new headers).
    return any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value)


def check_header(name: object, value: object) -> None:
    """Raise ``ValueError`` naming the header if it could not be sent verbatim.

    The value is never quoted in the message: it may be a credential.
    """
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ValueError(
            f"header name {name!r} is not a valid HTTP token "
            "(letters, digits and !#$%&'*+-.^_`|~ only; no spaces or control characters)"
        )
    if not isinstance(value, str):
        raise ValueError(f"header {name!r}: value must be a string, not {type(value).__name__}")
    if _has_control_chars(value):
        raise ValueError(f"header {name!r}: value contains CR, LF or another control character")


def _check_headers(value: Mapping[str, str] | None) -> Mapping[str, str] | None:
    if value is not None:
        for name, item in value.items():
            check_header(name, item)
    return value


def _check_protocols(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is not None:
        for protocol in value:
            if not _TOKEN.fullmatch(protocol):
                raise ValueError(
                    f"subprotocol {protocol!r} is not a valid token "
                    "(no spaces, commas or control characters)"
                )
    return value


def _check_secret(value: SecretStr) -> SecretStr:
    if _has_control_chars(value.get_secret_value()):
        raise ValueError("contains CR, LF or another control character")
    return value


def redact_protocols(protocols: tuple[str, ...]) -> tuple[str, ...]:
    """``protocols`` as they may be shown: credential-like subprotocols masked.

    Some APIs pass a token as a subprotocol (``base64url.bearer.authorization.
    k8s.io.<token>``): one that mentions a credential word, or is too long to be
    a plain protocol name, is masked.
    """
    return tuple(
        REDACTED
        if len(protocol) > 64
        or any(word in protocol.lower() for word in (*_SECRET_WORDS, "bearer", "auth"))
        else protocol
        for protocol in protocols
    )


_SECRET_WORDS = ("token", "secret", "password", "api-key", "apikey")


def _is_sensitive_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in SENSITIVE_HEADERS or any(word in lowered for word in _SECRET_WORDS)


class _Model(BaseModel):
    # hide_input_in_errors: a rejected URL or header may carry a secret; errors
    # still name the field and the reason, just not the value.
    # allow_inf_nan=False: every float here is a duration, a ratio or a factor;
    # inf would pass a "> 0" bound and then overflow (or never fire) at run time.
    # "Never" is spelled None where an option supports it.
    model_config = ConfigDict(
        extra="forbid",
        arbitrary_types_allowed=True,
        validate_default=True,
        hide_input_in_errors=True,
        allow_inf_nan=False,
    )


def _positional(
    model: type, names: tuple[str, ...], args: tuple[Any, ...], data: dict[str, Any]
) -> dict[str, Any]:
    # Positional arguments of a model's __init__ mapped to its fields. Checks run
    # in the model (a dict validated into it arrives here as keywords only).
    if len(args) > len(names):
        raise TypeError(f"{model.__name__}() takes at most {len(names)} positional arguments")
    for name, value in zip(names, args, strict=False):
        if name in data:
            raise TypeError(f"{model.__name__}() got {name!r} both positionally and by keyword")
        data[name] = value
    return data


class BearerAuth(_Model):
    """``Authorization: Bearer <token>``."""

    token: SecretStr

    _token_is_sendable = field_validator("token")(_check_secret)

    if TYPE_CHECKING:
        # A type checker accepts a plain string (the field is a SecretStr).
        def __init__(self, token: str | SecretStr) -> None: ...

    else:

        def __init__(self, *args, **data):  # BearerAuth(token) too
            super().__init__(**_positional(type(self), ("token",), args, data))

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token.get_secret_value()}"}


#: The header ``ApiKeyAuth`` sends its key in unless told otherwise.
DEFAULT_API_KEY_HEADER = "X-API-Key"


class ApiKeyAuth(_Model):
    """An API key sent in a header (``X-API-Key`` unless told otherwise)."""

    key: SecretStr
    header: str = DEFAULT_API_KEY_HEADER

    _key_is_sendable = field_validator("key")(_check_secret)

    if TYPE_CHECKING:

        def __init__(self, key: str | SecretStr, header: str = DEFAULT_API_KEY_HEADER) -> None: ...

    else:

        def __init__(self, *args, **data):  # ApiKeyAuth(key, header=...) too
            super().__init__(**_positional(type(self), ("key", "header"), args, data))

    @field_validator("header")
    @classmethod
    def _header_is_a_token(cls, value: str) -> str:
        check_header(value, "")
        return value

    def headers(self) -> dict[str, str]:
        return {self.header: self.key.get_secret_value()}


#: A plain string is a bearer token; an async callable returns headers and is
#: called again on every (re)connect, so short-lived tokens can be refreshed.
AuthSpec: TypeAlias = BearerAuth | ApiKeyAuth | AuthProvider


def _coerce_auth(value: Any) -> Any:
    if isinstance(value, str):
        return BearerAuth(token=SecretStr(value))
    if isinstance(value, SecretStr):
        return BearerAuth(token=value)
    return value


#: Shortest probe or heartbeat interval: anything shorter is a busy loop, not a check.
MIN_INTERVAL = 0.01


class HeartbeatConfig(_Model):
    """WebSocket ping keep-alive; a missed pong closes the connection with 1006."""

    interval: float | None = Field(default=20.0, ge=MIN_INTERVAL)
    """Seconds without any received data before a ping is sent; None disables."""
    timeout: float = Field(default=20.0, gt=0)
    """Seconds to wait for the pong before the connection is declared dead."""


class HealthCheckConfig(_Model):
    """Active probing of every backend."""

    enabled: bool = True
    interval: float = Field(default=30.0, ge=MIN_INTERVAL)
    timeout: float = Field(default=5.0, gt=0)
    unhealthy_threshold: int = Field(default=3, ge=1)
    healthy_threshold: int = Field(default=2, ge=1)
    path: str | None = None
    """HTTP GET on the backend's origin + path; None: WebSocket handshake + ping probe."""
    jitter: float = Field(default=0.1, ge=0, lt=1)
    """Each interval is scaled by a random factor in [1 - jitter, 1 + jitter]."""

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"path must start with '/', got {value!r}")
        return value


class CircuitBreakerConfig(_Model):
    """Per-backend breaker fed by passive signals (connect errors, abnormal closes)."""

    enabled: bool = True
    failure_threshold: int = Field(default=5, ge=1)
    recovery_timeout: float = Field(default=60.0, gt=0)
    half_open_max_trials: int = Field(default=1, ge=1)


class BackoffConfig(_Model):
    """Reconnect delays per backend: exponential, jittered, capped."""

    initial_delay: float = Field(default=1.0, gt=0)
    multiplier: float = Field(default=1.6, ge=1)
    jitter: float = Field(default=0.2, ge=0, lt=1)
    max_delay: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _cap_not_below_start(self) -> BackoffConfig:
        if self.max_delay < self.initial_delay:
            raise ValueError(
                f"reconnect.max_delay ({self.max_delay}) < reconnect.initial_delay "
                f"({self.initial_delay})"
            )
        return self


def _validate_ws_url(value: str) -> str:
    try:
        url = URL(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if url.scheme not in ("ws", "wss"):
        raise ValueError(f"url scheme must be ws:// or wss://, got {url.scheme or 'none'!r}")
    if not url.host:
        raise ValueError("url has no host")
    if url.user is not None or url.password is not None:
        # Credentials in a URL end up in logs and error messages; refuse them.
        raise ValueError("url must not contain credentials (user:password@); use auth= instead")
    return value


def _check_server_hostname(value: str | None) -> str | None:
    if value is None:
        return None
    if not value or _has_control_chars(value) or any(c in value for c in " /:@[]"):
        raise ValueError(f"server_hostname must be a plain host name, got {value!r}")
    return value


TransportName: TypeAlias = Literal["aiohttp", "picows"]

#: Options a transport cannot honour, with the reason given in the error.
_UNSUPPORTED: dict[str, dict[str, str]] = {
    "picows": {"compression": "picows has no permessage-deflate"},
}


def check_transport(options: ConnectionOptions, where: str = "") -> None:
    """Refuse, before any socket opens, a combination the chosen transport cannot carry."""
    name = options.transport
    for option, why in _UNSUPPORTED.get(name, {}).items():
        if getattr(options, option):
            raise ValueError(
                f"{where}{option}={getattr(options, option)!r} is not supported with "
                f"transport={name!r} ({why}); use transport='aiohttp' for it"
            )
    if name == "picows" and importlib.util.find_spec("picows") is None:
        raise ValueError(
            f"{where}transport='picows' needs the picows package: pip install 'wsclient[fast]'"
        )


class ConnectionOptions(_Model):
    """Options of one WebSocket connection (``connect()`` keywords, pool defaults)."""

    transport: TransportName = "aiohttp"
    """Which WebSocket implementation carries the frames (picows: extra wsclient[fast])."""
    max_message_size: int = Field(default=4 * 1024 * 1024, ge=0)
    """Largest message accepted or sent, in bytes; 0 disables the limit."""
    compression: bool = False
    """Negotiate permessage-deflate."""
    protocols: tuple[str, ...] = ()
    """Subprotocols offered in the handshake."""
    headers: dict[str, str] = Field(default_factory=dict)
    auth: AuthSpec | None = None
    connect_timeout: float = Field(default=10.0, gt=0)
    close_timeout: float = Field(default=5.0, gt=0)
    """How long close() waits for the peer's close frame."""
    ssl: ssl_module.SSLContext | bool | None = None
    """None/True: verify certificates (default); an SSLContext: use it; False: don't verify."""
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig)
    server_hostname: str | None = None
    """Name for TLS (SNI, certificate check) and the ``Host`` header when the URL
    dials an address rather than that name; ``DnsResolver`` sets it. None: the URL's host."""

    @field_validator("auth", mode="before")
    @classmethod
    def _string_is_bearer(cls, value: Any) -> Any:
        return _coerce_auth(value)

    _server_hostname_is_a_name = field_validator("server_hostname")(_check_server_hostname)

    # Checked here, not when the handshake is sent: a CR/LF in a header would
    # otherwise fail every connect and open the breaker on a healthy backend.
    _headers_are_sendable = field_validator("headers")(_check_headers)
    _protocols_are_tokens = field_validator("protocols")(_check_protocols)

    @model_validator(mode="after")
    def _transport_supports_the_options(self) -> ConnectionOptions:
        if type(self) is ConnectionOptions:  # PoolConfig checks each backend's merge
            check_transport(self)
        return self

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "headers" and isinstance(value, Mapping):
                yield name, redact_headers(value)
            elif name == "protocols" and isinstance(value, tuple):
                yield name, redact_protocols(value)
            else:
                yield name, value


# Fields a Backend may override; None means "inherit the pool's value".
_OVERRIDABLE = tuple(ConnectionOptions.model_fields)


class Backend(_Model):
    """One upstream WebSocket server.

    ``Backend("ws://host/ws")`` or a plain URL string in ``backends=`` gives
    ``id = url`` and ``weight = 1``. Any connection option set here overrides
    the pool's for this backend only.
    """

    id: str = ""
    url: str
    weight: int = Field(default=1, ge=1, le=10_000)
    transport: TransportName | None = None
    max_message_size: int | None = Field(default=None, ge=0)
    compression: bool | None = None
    protocols: tuple[str, ...] | None = None
    headers: dict[str, str] | None = None
    auth: AuthSpec | None = None
    connect_timeout: float | None = Field(default=None, gt=0)
    close_timeout: float | None = Field(default=None, gt=0)
    ssl: ssl_module.SSLContext | bool | None = None
    heartbeat: HeartbeatConfig | None = None
    server_hostname: str | None = None

    def __init__(self, url: str | None = None, /, **data: Any) -> None:
        if url is not None:
            data["url"] = url
        super().__init__(**data)

    @field_validator("auth", mode="before")
    @classmethod
    def _string_is_bearer(cls, value: Any) -> Any:
        return _coerce_auth(value)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _validate_ws_url(value)

    _headers_are_sendable = field_validator("headers")(_check_headers)
    _protocols_are_tokens = field_validator("protocols")(_check_protocols)
    _server_hostname_is_a_name = field_validator("server_hostname")(_check_server_hostname)

    @model_validator(mode="after")
    def _default_id(self) -> Backend:
        if not self.id:
            # The id is shown everywhere (logs, health_status(), errors): a token
            # in the URL's query string must not become part of it.
            self.id = redact_url(self.url)
        return self

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if value is None:
                continue  # inherited options are noise in a repr
            if name == "url":
                yield name, redact_url(value)
            elif name == "headers" and isinstance(value, Mapping):
                yield name, redact_headers(value)
            elif name == "protocols" and isinstance(value, tuple):
                yield name, redact_protocols(value)
            else:
                yield name, value

    def connection_options(self, defaults: ConnectionOptions) -> ConnectionOptions:
        """The pool's connection options with this backend's overrides applied."""
        overrides = {
            name: getattr(self, name) for name in _OVERRIDABLE if getattr(self, name) is not None
        }
        if not overrides:
            return defaults
        if "headers" in overrides:
            overrides["headers"] = {**defaults.headers, **overrides["headers"]}
        return defaults.model_copy(update=overrides)


LoadBalancing: TypeAlias = str


class PoolConfig(ConnectionOptions):
    """Everything ``WebSocketPool`` accepts; see the README for each option."""

    backends: list[Backend] = Field(default_factory=list)
    load_balancing: LoadBalancing = "weighted-round-robin"
    min_connections: int = Field(default=2, ge=0)
    max_connections: int = Field(default=50, ge=1)
    acquire_timeout: float | None = Field(default=30.0, gt=0)
    idle_timeout: float | None = Field(default=300.0, gt=0)
    max_lifetime: float | None = Field(default=None, gt=0)
    """Recycle connections after this many seconds (±10 % jitter); None: never."""
    validate_on_checkout: bool = False
    shutdown_timeout: float = Field(default=30.0, ge=0)
    """How long close() waits for leased connections to come back before closing them."""
    health_check: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    reconnect: BackoffConfig = Field(default_factory=BackoffConfig)
    panic_threshold: float | None = Field(default=None, gt=0, le=1)
    """If the healthy share of backends falls below this, route to all of them."""
    slow_start: float | None = Field(default=None, gt=0)
    """Seconds over which a recovered backend's weight ramps from 10 % to 100 %."""
    on_idle_message: Literal["discard", "close"] = "discard"
    """What to do with a data message that arrives on an idle pooled connection."""
    init: Callable[[Any], Awaitable[Any]] | None = None
    """``async init(conn)`` run once on every new connection before its first lease."""

    @field_serializer("init")
    def _init_name(self, value: Callable[[Any], Awaitable[Any]] | None) -> str | None:
        # A dump (JSON, a status page) names the hook instead of failing on a function.
        return None if value is None else getattr(value, "__qualname__", type(value).__name__)

    @field_validator("backends", mode="before")
    @classmethod
    def _plain_urls(cls, value: Any) -> Any:
        if isinstance(value, str | Backend | Mapping):
            raise ValueError("backends must be a list of Backend, dict or URL string")
        if isinstance(value, list | tuple):
            return [Backend(url=item) if isinstance(item, str) else item for item in value]
        return value

    @field_validator("backends")
    @classmethod
    def _unique_ids(cls, value: list[Backend]) -> list[Backend]:
        seen: set[str] = set()
        for backend in value:
            if backend.id in seen:
                raise ValueError(f"duplicate backend id {backend.id!r}")
            seen.add(backend.id)
        return value

    @field_validator("load_balancing")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from wsclient.balancers import balancer_names

        names = balancer_names()
        if value not in names:
            raise ValueError(f"unknown load_balancing {value!r}; choose one of: {', '.join(names)}")
        return value

    @model_validator(mode="after")
    def _transports_support_the_options(self) -> PoolConfig:
        defaults = ConnectionOptions.model_construct(
            **{name: getattr(self, name) for name in _OVERRIDABLE}
        )
        check_transport(defaults)
        for backend in self.backends:
            check_transport(backend.connection_options(defaults), f"backend {backend.id!r}: ")
        return self

    @model_validator(mode="after")
    def _sizes(self) -> PoolConfig:
        if self.min_connections > self.max_connections:
            raise ValueError(
                f"min_connections ({self.min_connections}) > max_connections "
                f"({self.max_connections})"
            )
        return self

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Self:
        """The options in a TOML (``.toml``) or JSON (``.json``) file.

        The file's top level holds ``PoolConfig`` fields, nested options as
        tables (``[health_check]``) and backends as an array of tables
        (``[[backends]]``) or URL strings. Values are validated by this model,
        with the same messages as keyword arguments; each error carries a note
        naming the file. Unset options keep their defaults.
        """
        from wsclient.config_sources import build, read_config_file

        return build(cls, [(f"file {os.fspath(path)}", read_config_file(path))])

    @classmethod
    def from_env(cls) -> Self:
        """The options set by ``WSCLIENT_*`` environment variables (defaults elsewhere).

        ``WSCLIENT_MAX_CONNECTIONS=10``, ``WSCLIENT_HEALTH_CHECK__INTERVAL=5``
        (``__`` reaches into a nested option), lists and tables as JSON
        (``WSCLIENT_BACKENDS='["ws://a/ws"]'``), ``null`` for ``None``. A
        ``WSCLIENT_`` variable that names no option raises ``ValueError``.
        """
        from wsclient.config_sources import load

        return load(cls, None, {})

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, /, **overrides: Any) -> Self:
        """Options by precedence: ``overrides`` > ``WSCLIENT_*`` variables > file > defaults.

        Nested tables merge key by key across the layers
        (``WSCLIENT_HEALTH_CHECK__INTERVAL`` changes the file's interval and
        keeps its path); ``backends`` is replaced whole by a higher layer.
        """
        from wsclient.config_sources import load

        return load(cls, path, overrides)

    def connection_defaults(self) -> ConnectionOptions:
        """The per-connection options part of this config."""
        return ConnectionOptions.model_validate(
            {name: getattr(self, name) for name in _OVERRIDABLE}
        )
