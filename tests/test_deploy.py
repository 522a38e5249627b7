"""The deployment files stay true to the code: every package is in the image, and
docker-compose passes only variables MES reads. (`.ci/compose-check` validates the file
itself with docker-compose.)"""

from __future__ import annotations

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).parent.parent


def test_the_image_copies_every_package_folder():
    folders = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    )
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (ROOT / "Dockerfile").read_text(), re.M))
    assert folders <= copied, folders - copied


def test_compose_sets_only_variables_mes_reads():
    compose = (ROOT / "docker-compose.yml").read_text()
    names = set(re.findall(r"^\s+((?:MES|SQL|REDIS)_[A-Z_]+|TZ|DEBUG):", compose, re.M))
    code = "".join(p.read_text() for p in (ROOT / "mes" / "config").glob("*.py"))
    unknown = {n for n in names if f'"{n}"' not in code}
    assert names and not unknown, unknown
