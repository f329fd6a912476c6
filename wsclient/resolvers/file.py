"""``FileResolver``: backends listed in a JSON or TOML file, re-read when it changes.

The file holds a list of backends, each a URL string or a table of
``Backend`` fields::

    # backends.toml                      // backends.json
    [[backends]]                         {"backends": [
    id = "ws-1"                            {"id": "ws-1", "url": "ws://10.0.0.1:8080/ws",
    url = "ws://10.0.0.1:8080/ws"           "weight": 2},
    weight = 2                             "ws://10.0.0.2:8080/ws"]}

(JSON may also be a bare list.) The file is checked every ``interval``
seconds (its size, mtime and inode) and parsed only when one changed. A
file that is missing, half-written or invalid is a failed resolution: the
last good list stays and the error is shown in ``pool.fleet_status()``.
Write it atomically (write a temporary file, then rename) all the same.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from wsclient.config import Backend
from wsclient.resolvers.base import Resolution, ResolverError, check_seconds

__all__ = ["FileResolver"]


class FileResolver:
    """``FileResolver("backends.toml", interval=1.0)``; ``.json`` or ``.toml`` by suffix."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        interval: float = 1.0,
        empty_grace: float = 30.0,
        format: str | None = None,
    ) -> None:
        self.path = Path(path)
        check_seconds("interval", interval)
        if not (isinstance(empty_grace, int | float) and empty_grace >= 0):
            raise ValueError(f"empty_grace must be a number of seconds >= 0, got {empty_grace!r}")
        fmt = format or self.path.suffix.lstrip(".").lower()
        if fmt not in ("json", "toml"):
            raise ValueError(f"FileResolver reads .json or .toml files, not {self.path.name!r}")
        self.format = fmt
        self.interval = float(interval)
        self.empty_grace = float(empty_grace)
        self.retry_delay = self.interval
        self.timeout = 5.0
        self._seen: tuple[int, int, int] | None = None
        self._backends: list[Backend] = []

    def describe(self) -> str:
        return f"file {self.path}"

    def __repr__(self) -> str:
        return f"<FileResolver {str(self.path)!r}>"

    async def resolve(self) -> Resolution:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise ResolverError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen != self._seen:
            # Small files, read whole: the read does not wait on a peer.
            self._backends = self._parse(self.path.read_bytes())
            self._seen = seen
        return Resolution(list(self._backends), self.interval)

    def _parse(self, data: bytes) -> list[Backend]:
        try:
            if self.format == "json":
                document: Any = json.loads(data)
            else:
                document = tomllib.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ResolverError(f"{self.path}: not valid {self.format.upper()}: {exc}") from None
        items = document.get("backends") if isinstance(document, dict) else document
        if not isinstance(items, list):
            raise ResolverError(f"{self.path}: expected a list of backends (key 'backends')")
        backends = []
        for index, item in enumerate(items):
            try:
                backend = (
                    Backend(url=item) if isinstance(item, str) else Backend.model_validate(item)
                )
            except ValidationError as exc:
                # Only where and what: the input may hold a token (headers, auth).
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}"
                    for e in exc.errors(include_input=False, include_url=False)
                )
                raise ResolverError(f"{self.path}: backend #{index}: {problems}") from None
            backends.append(backend)
        ids = [b.id for b in backends]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ResolverError(f"{self.path}: duplicate backend ids: {', '.join(duplicates)}")
        return backends
