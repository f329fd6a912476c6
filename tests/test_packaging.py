"""Release hygiene: the wheel ``python -m build`` makes, installed and used in a fresh venv.

The wheel is built without build isolation (the dev extra has setuptools and
build), so no network and about two seconds. It is installed with pip into a
new venv whose only other packages are wsclient's dependencies (a path to
this venv's site-packages, which is not a site directory there, so the
editable install of the work tree is not visible), and that venv runs the
quickstart example from outside the repository.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from trove_classifiers import classifiers as known_classifiers

import wsclient

ROOT = Path(__file__).resolve().parent.parent
DIST_NAME = "wsclient-pool"


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of what a source distribution holds, so no build/ or
    # egg-info is written into the work tree and no stale build/ leaks in.
    tree = tmp_path_factory.mktemp("source")
    shutil.copytree(
        ROOT / "wsclient", tree / "wsclient", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, tree, cwd=tree)
    (built,) = out.glob("*.whl")
    return built


def test_wheel_metadata_name_version_license_and_contents(wheel: Path) -> None:
    """The wheel is wsclient-pool at the one version, MIT with its LICENSE, typed, complete."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert metadata["Name"] == DIST_NAME
    assert metadata["Version"] == wsclient.__version__
    assert metadata["License-Expression"] == "MIT"
    assert f"{dist_info}/licenses/LICENSE" in names
    assert "wsclient/py.typed" in names
    assert "wsclient = wsclient.pytest_plugin" in entry_points
    classifiers = metadata.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert [c for c in classifiers if c not in known_classifiers] == []
    assert {url.split(",")[0] for url in metadata.get_all("Project-URL") or []} >= {
        "Homepage",
        "Documentation",
        "Changelog",
    }
    # every module of the source tree is in the wheel, and nothing else of the repo
    source = {str(path.relative_to(ROOT)) for path in (ROOT / "wsclient").rglob("*.py")} | {
        "wsclient/py.typed"
    }
    packaged = {name for name in names if name.startswith("wsclient/")}
    assert packaged == source
    assert not [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/"))]


def test_version_is_written_once() -> None:
    """pyproject reads the version from wsclient/_version.py; no other file states it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "wsclient._version.__version__"
    }
    stated = [
        path
        for path in (ROOT / "wsclient").rglob("*.py")
        if f'"{wsclient.__version__}"' in path.read_text()
    ]
    assert stated == [ROOT / "wsclient" / "_version.py"]


def test_wheel_installs_into_a_fresh_venv_and_runs_the_quickstart(
    wheel: Path, tmp_path: Path
) -> None:
    """pip installs the wheel into a new venv; from outside the repo it imports and serves."""
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(
        run(
            python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path
        ).strip()
    )
    # The dependencies (aiohttp, pydantic, ...) come from this venv: a plain
    # path entry, so its .pth files (the editable install) are not run there.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--no-index",
        "-q",
        wheel,
        cwd=tmp_path,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    where = run(
        python,
        "-c",
        "import importlib.metadata as m, wsclient; "
        f"print(wsclient.__file__, wsclient.__version__, m.version({DIST_NAME!r}))",
        cwd=tmp_path,
        env=env,
    ).split()
    assert Path(where[0]).is_relative_to(site)
    assert where[1] == where[2] == wsclient.__version__
    quickstart = tmp_path / "quickstart.py"
    quickstart.write_text((ROOT / "examples" / "quickstart.py").read_text())
    out = run(python, quickstart, cwd=tmp_path, env=env)
    first = out.splitlines()[0]
    assert first.split()[0] in ("a", "b")
    assert "{'type': 'hello'}" in first
    assert "'healthy': True" in out
