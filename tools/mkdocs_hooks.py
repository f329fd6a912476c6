"""mkdocs hook: the guide page is the README (``docs/index.md`` includes it).

The README's links are relative to the repository root, where GitHub shows it;
in the site that page lives in ``docs/``, so ``docs/...`` targets lose that
prefix. The include is done here (the snippets extension would run after this
hook, too late to rewrite what it pulls in).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_ROOT_LINK = re.compile(r"\]\(docs/")
_INCLUDE = '--8<-- "README.md"'


def on_page_markdown(markdown: str, page: Any, config: Any, **_: Any) -> str:
    if page.file.src_uri != "index.md" or _INCLUDE not in markdown:
        return markdown
    readme = Path(config.config_file_path).parent / "README.md"
    return markdown.replace(_INCLUDE, _ROOT_LINK.sub("](", readme.read_text()))
