"""The folders install under one ``mes`` namespace, regular and editable: imported from a
directory that has its own ``schemas.py`` and ``worker.py``, both sides get their own.

Builds are isolated, as a user's ``pip install`` is: pip installs pyproject's
``[build-system] requires`` (setuptools>=77) for the build, whatever setuptools the
test's own venv has (a fresh ``python3 -m venv`` has 65, which refuses ``license = "MIT"``;
tests/test_quickstart.py runs this file in such a venv)."""

from __future__ import annotations

import pathlib
import site
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).parent.parent
CHECK = r"""
import json, pathlib, sys
import schemas, worker                      # the application's own modules
import mes, mes.schemas, mes.worker, mes.producer, mes.storage, mes.reader, mes.api, mes.config
assert schemas.MARKER == "app" and worker.MARKER == "app", "the app's modules were shadowed"
from mes.schemas import validate_event      # ours, under the namespace
files = sorted(p.name for p in pathlib.Path(mes.schemas.__file__).parent.glob("*.schema.json"))
print(json.dumps({"mes": mes.__file__, "schemas": mes.schemas.__file__, "app": schemas.__file__,
                  "schema_files": files, "contract": (pathlib.Path(mes.schemas.__file__).parent / "CONTRACT.md").exists(),
                  "typed": (pathlib.Path(mes.__file__).parent / "py.typed").exists()}))
"""


def _venv(path: pathlib.Path) -> pathlib.Path:
    """A bare venv that sees this interpreter's installed dependencies, but not MES itself."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    (site_dir,) = (path / "lib").glob("python3*/site-packages")
    deps = [p for p in site.getsitepackages() if pathlib.Path(p).is_dir()]
    (site_dir / "mes_test_deps.pth").write_text("\n".join(deps) + "\n")  # paths only: no .pth of theirs runs
    return path / "bin" / "python"


def _pip(python: pathlib.Path, *args: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "-q",
        "--no-deps",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _app_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "schemas.py").write_text('MARKER = "app"\n')
    (app / "worker.py").write_text('MARKER = "app"\n')
    return app


def _check(python: pathlib.Path, app: pathlib.Path) -> dict[str, object]:
    import json

    done = subprocess.run([str(python), "-c", CHECK], cwd=app, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_regular_install_from_a_wheel(tmp_path):
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("mes_history-*.whl")
    python = _venv(tmp_path / "venv")
    _pip(python, str(wheel))
    app = _app_dir(tmp_path)
    found = _check(python, app)
    assert "site-packages/mes/" in str(found["mes"]) and "site-packages/mes/schemas/" in str(found["schemas"])
    assert str(found["app"]).startswith(str(app))
    assert found["schema_files"] == [
        "chat-event.v1.schema.json",
        "error-event.v1.schema.json",
        "event.v1.schema.json",
    ]
    assert found["contract"]
    assert found["typed"]  # PEP 561: type checkers read MES's annotations
    helped = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "mes"), "--help"], capture_output=True, text=True, cwd=app
    )
    assert helped.returncode == 0 and "worker" in helped.stdout


def test_editable_install(tmp_path):
    python = _venv(tmp_path / "venv")
    _pip(python, "-e", str(ROOT))
    app = _app_dir(tmp_path)
    found = _check(python, app)
    assert found["schemas"] == str(ROOT / "schemas" / "__init__.py")  # the folder keeps its name
    assert found["mes"] == str(ROOT / "mes" / "__init__.py")
    assert str(found["app"]).startswith(str(app))
