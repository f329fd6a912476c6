"""Where a ``PoolConfig``'s values come from: files, the environment, precedence.

The models in ``config.py`` say what each option is and how it is checked;
this module only gathers values from outside the program and hands them to
those same models, so a value read from a file is validated exactly like the
keyword argument of the same name, with the same message. What is added to a
``ValidationError`` is a note saying where the rejected value came from.

Nothing read here is ever quoted in an error: a configuration file or an
environment variable may hold a token.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict, SettingsError

M = TypeVar("M", bound=BaseModel)

#: Every environment variable for a pool option starts with this.
ENV_PREFIX = "WSCLIENT_"
#: Separates a nested option: ``WSCLIENT_HEALTH_CHECK__INTERVAL``.
ENV_NESTED_DELIMITER = "__"
#: The value that means ``None`` ("never", "disabled") in an environment variable.
ENV_NONE = "null"

#: File suffixes ``PoolConfig.from_file`` understands, and their format's name.
FILE_FORMATS = {".toml": "TOML", ".json": "JSON"}


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options in a TOML or JSON file, as a dict (not validated yet).

    The format is chosen by the suffix. A missing file raises
    ``FileNotFoundError``; a file that does not parse, or whose top level is
    not a table/object, raises ``ValueError`` naming the file and the place,
    never its contents (and with no exception chain: the JSON decoder's error
    holds the whole document).
    """
    file = Path(path)
    kind = FILE_FORMATS.get(file.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{file}: unknown configuration format {file.suffix or '(no suffix)'!r}; "
            f"use one of: {', '.join(FILE_FORMATS)}"
        )
    raw = file.read_bytes()
    try:
        data: object = tomllib.loads(raw.decode()) if kind == "TOML" else json.loads(raw)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{file}: not valid TOML: {exc}") from None
    except json.JSONDecodeError as exc:
        # exc.msg and the position only: str(exc) is fine too, but exc.doc is the file.
        raise ValueError(
            f"{file}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: the top level must be a table of options, not {kind} array")
    return data


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merge option dicts, later layers winning; nested tables merge key by key.

    ``merge({"health_check": {"interval": 5}}, {"health_check": {"timeout": 1}})``
    keeps both keys, so an environment variable for one nested option does not
    wipe the file's other options of that table. Lists (``backends``) and
    anything that is not a plain dict are replaced whole.
    """
    result: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            current = result.get(key)
            if isinstance(current, dict) and isinstance(value, Mapping):
                result[key] = merge(current, value)
            else:
                result[key] = dict(value) if isinstance(value, Mapping) else value
    return result


@functools.cache
def _settings_class(model: type[BaseModel]) -> type[BaseSettings]:
    # pydantic-settings reads a model's fields to know which variables to look
    # for and which values are JSON (lists, tables); only its reading is used,
    # the validation stays the model's own (see build()).
    config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
        env_parse_none_str=ENV_NONE,
    )
    return type(f"{model.__name__}Environment", (BaseSettings, model), {"model_config": config})


def read_environment(model: type[BaseModel]) -> dict[str, Any]:
    """The ``WSCLIENT_*`` variables that name fields of ``model``, as option dicts.

    ``WSCLIENT_MAX_CONNECTIONS=10`` sets ``max_connections``;
    ``WSCLIENT_HEALTH_CHECK__INTERVAL=5`` one nested option; lists and tables
    are JSON (``WSCLIENT_BACKENDS='["ws://a/ws"]'``); ``null`` is ``None``.
    Names are case-insensitive. A ``WSCLIENT_`` variable that names no option
    is an error (a typo must not be ignored), and so is a JSON value that does
    not parse; neither message quotes the value.
    """
    unknown = sorted(_unknown_variables(model, os.environ))
    if unknown:
        raise ValueError("; ".join(_explain_unknown(model, name) for name in unknown))
    try:
        return dict(EnvSettingsSource(_settings_class(model))())
    except SettingsError as exc:
        # The message names the field; its cause (a JSONDecodeError) holds the
        # value, which may be a token: neither is passed on.
        field = str(exc).split('"')[1] if '"' in str(exc) else "?"
        raise ValueError(
            f"environment variable {ENV_PREFIX}{field.upper()}: not valid JSON "
            "(lists and tables are given as JSON)"
        ) from None


def _option_path(name: str) -> list[str]:
    return name[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER)


def _unknown_variables(model: type[BaseModel], environ: Mapping[str, str]) -> list[str]:
    unknown = []
    for name in environ:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = _option_path(name)
        fields: Mapping[str, Any] | None = model.model_fields
        for part in path:
            if fields is None or part not in fields:
                # no such option, or WSCLIENT_MAX_CONNECTIONS__X: not a table
                unknown.append(name)
                break
            fields = _nested_fields(fields[part].annotation)
    return unknown


def _nested_fields(annotation: Any) -> dict[str, Any] | None:
    # The options that are tables: HeartbeatConfig, HeartbeatConfig | None, and
    # auth (BearerAuth | ApiKeyAuth | ...: the fields of either). None: not a table.
    candidates = getattr(annotation, "__args__", (annotation,))
    fields: dict[str, Any] = {}
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            fields.update(candidate.model_fields)
    return fields or None


def _explain_unknown(model: type[BaseModel], name: str) -> str:
    known = [ENV_PREFIX + field.upper() for field in model.model_fields]
    close = difflib.get_close_matches(name.upper().split(ENV_NESTED_DELIMITER)[0], known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"environment variable {name} names no {model.__name__} option{hint}"


def env_variable(loc: Sequence[int | str], environ: Mapping[str, str]) -> str | None:
    """The variable that set the value at ``loc``: the most specific one present."""
    present = {name.upper(): name for name in environ}
    for depth in range(len(loc), 0, -1):
        parts = [str(part).upper() for part in loc[:depth]]
        name = ENV_PREFIX + ENV_NESTED_DELIMITER.join(parts)
        if name in present:
            return present[name]
    return None


def where_from(loc: tuple[int | str, ...], sources: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Which source supplied the value at ``loc``, or ``""`` if none did.

    The source whose data reaches deepest along ``loc`` wins (a missing key
    inside a table is blamed on the source that gave the table); on a tie the
    one listed first, i.e. the one of higher precedence.
    """
    best, best_depth = "", 0
    for label, data in sources:
        node: Any = data
        depth = 0
        for part in loc:
            in_table = isinstance(node, Mapping) and part in node
            in_array = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
            if not (in_table or in_array):
                break
            node = node[part]
            depth += 1
        if depth > best_depth:
            best, best_depth = label, depth
    return best


#: The label of the environment's layer in ``build()``'s sources.
ENVIRONMENT = "the environment"


def load(model: type[M], path: str | os.PathLike[str] | None, overrides: Mapping[str, Any]) -> M:
    """``model`` from, by precedence: ``overrides`` > environment > file > defaults."""
    sources: list[tuple[str, Mapping[str, Any]]] = [
        ("the arguments", overrides),
        (ENVIRONMENT, read_environment(model)),
    ]
    if path is not None:
        sources.append((f"file {os.fspath(path)}", read_config_file(path)))
    return build(model, sources)


def build(model: type[M], sources: Sequence[tuple[str, Mapping[str, Any]]]) -> M:
    """Validate the merged ``sources`` (highest precedence first) with ``model``.

    On a ``ValidationError`` the error itself is unchanged (the messages are
    the model's own); a note per error says which source the value came from.
    """
    data = merge(*(layer for _, layer in reversed(sources)))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            label = where_from(tuple(error["loc"]), sources)
            if label == ENVIRONMENT:
                variable = env_variable(error["loc"], os.environ)
                label = f"environment variable {variable}" if variable else label
            if label:
                where = ".".join(str(part) for part in error["loc"])
                exc.add_note(f"{where}: from {label}")
        raise
