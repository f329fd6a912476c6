"""The README's code blocks that claim to run: extracted and run as a user would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_blocks_after(heading: str) -> list[str]:
    """The ```python blocks of the README section that starts with ``heading``."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_readme_pytest_example_passes_under_pytest_asyncios_strict_default(
    tmp_path: Path,
) -> None:
    """The "Testing your service" example, in a project of its own with no asyncio_mode set."""
    example = python_blocks_after("## Testing your service")[0]
    assert "wsclient_fault_proxy" in example
    (tmp_path / "test_readme_example.py").write_text(example)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # pytest-asyncio's defaults
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--timeout", "60"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=90,
    )
    output = result.stdout + result.stderr
    assert "mode=Mode.STRICT" in output or "mode=strict" in output, output
    assert re.search(r"=+ 1 passed[ ,]", output), output
    assert result.returncode == 0, output
