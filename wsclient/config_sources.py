"""Where a ``PoolConfig``'s values come from: files (TOML, JSON) and their merging.

The models in ``config.py`` say what each option is and how it is checked;
this module only gathers values from outside the program and hands them to
those same models, so a value read from a file is validated exactly like the
keyword argument of the same name, with the same message. What is added to a
``ValidationError`` is a note saying where the rejected value came from.

Nothing read here is ever quoted in an error: a configuration file or an
environment variable may hold a token.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

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
            if label:
                where = ".".join(str(part) for part in error["loc"])
                exc.add_note(f"{where}: from {label}")
        raise
