"""README.md's quick start, for real: a fresh clone of this repository's HEAD, a fresh
``python -m venv`` with the interpreter's own pip and setuptools (no upgrade: pip 23.2 and
setuptools 65 on Python 3.11.7), and the README's two commands as it writes them.

The first (install, then ``mes up``) runs in the background until ``mes up`` is ready;
``mes demo`` runs beside it (the README's "second terminal, same folder"); the README's
gateway examples (``<!-- example: gateway-events -->``: one event through Redis,
one over HTTP) are sent to it as written, both conversations are read back over the API,
and Ctrl-C (SIGINT to the command's process group, as a terminal sends it) stops it.
The second (install the test extra, then ``python -m pytest``) runs in a reduced form:
its install as written, then its pytest command on ``tests/test_install.py`` only (the
whole suite runs once, in ``.ci/run``, whose test command
``test_readme.py::test_ci_runs_the_readme_test_command`` checks).

What differs from a new user's machine, on purpose: pip installs with
``PIP_CONSTRAINT=requirements/lock.txt`` (CI's pins, and pip's cache) and the variables
that would point MES elsewhere (``MES_*``, ``SQL_DSN``, ``REDIS_CONN_STRING``) are unset;
port 8080 is used when free, else another (``MES_API_PORT``), and the examples' URLs are
pointed at it. The clone is of HEAD: uncommitted changes are not in it.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from . import readme
from .conftest import missing

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).parent.parent
_CONFIG_PREFIXES = ("MES_", "SQL_", "REDIS_", "PYTEST_", "PYTHON")
_CONFIG_NAMES = {"TZ", "DEBUG", "VIRTUAL_ENV", "SQL_DSN"}
READY_LINE = "Ctrl-C stops it"


def _port_8080_or_free() -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8080))
            return 8080
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def _fresh_env(venv: pathlib.Path, clone: pathlib.Path, port: int) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_PREFIXES) and k not in _CONFIG_NAMES
    }
    # This test's own venv off PATH: `pip`, `mes` and `python` are the fresh venv's.
    ours = str(pathlib.Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p != ours]
    env.update(
        PATH=os.pathsep.join([str(venv / "bin"), *path]),
        VIRTUAL_ENV=str(venv),
        PIP_CONSTRAINT=str(clone / "requirements" / "lock.txt"),
        MES_API_PORT=str(port),
    )
    return env


def _clone(tmp_path: pathlib.Path) -> pathlib.Path:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        missing("git clone of the repository", "no git, or this tree is not a git checkout")
    head = subprocess.run(
        [git, "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    )
    clone = tmp_path / "mes"
    subprocess.run([git, "clone", "-q", "--no-checkout", str(ROOT), str(clone)], check=True, timeout=120)
    subprocess.run([git, "-C", str(clone), "checkout", "-q", head.stdout.strip()], check=True, timeout=120)
    return clone


def _wait_ready(process: subprocess.Popen[Any], log: pathlib.Path, base: str) -> str:
    """The banner ``mes up`` printed, once its API answers ready. (A deadline against a
    hang, not a timing assertion: the install in the same command takes most of it.)"""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        assert process.poll() is None, "the quick start's first command exited:\n" + text[-6000:]
        if READY_LINE in text:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    return text
            except httpx.HTTPError:
                pass
        time.sleep(0.5)
    raise AssertionError("mes up did not become ready:\n" + log.read_text(errors="replace")[-6000:])


def _sent_events(body: str) -> dict[str, list[tuple[str, str]]]:
    """The conversations the example block sends: id -> (role, content) of each message."""
    sent: dict[str, list[tuple[str, str]]] = {}
    for payload in re.findall(r"'(\{.*?\})'", body, re.S):
        data = json.loads(payload)
        for event in data.get("events", [data]):
            turns = [(m["role"], m["content"]) for m in event["messages"]]
            answer = event["response"]["choices"][0]["message"]
            sent[event["conversation_id"]] = [*turns, (answer["role"], answer["content"])]
    return sent


def _read_back(base: str, key: str, conversation: str) -> list[tuple[str, str]]:
    """The conversation's messages once the workers have written them (deadline: a hang)."""
    url = f"{base}/api/v1/conversations/{conversation}"
    deadline = time.monotonic() + 120
    answer: Any = None
    while time.monotonic() < deadline:
        answer = httpx.get(url, params={"user_id": 1}, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        if answer.status_code == 200 and answer.json()["messages"]:
            return [(m["role"], m["content"]) for m in answer.json()["messages"]]
        assert answer.status_code in (200, 404), answer.text
        time.sleep(0.3)
    raise AssertionError(f"{conversation} was not written: {answer.status_code if answer else None}")


def test_quick_start_on_a_fresh_clone_and_venv(tmp_path):
    run_cmd, test_cmd = readme.commands(readme.example("quick-start"))
    clone = _clone(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    port = _port_8080_or_free()
    env = _fresh_env(venv, clone, port)
    base = f"http://127.0.0.1:{port}"

    # 1. the run command, in the background, in its own process group (a terminal's job)
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen(
            ["bash", "-c", run_cmd],
            cwd=clone,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        banner = _wait_ready(up, log, base)
        key = (clone / "mes-data" / "api-key").read_text().strip()
        assert key.startswith("mes-") and key in banner, "the banner shows the operator key it made"
        (redis_url,) = set(re.findall(r"queue\s+(redis://\S+)", banner))

        # "run `mes demo` in a second terminal (same folder)": it finds the running mes up
        demo = subprocess.run(
            ["mes", "demo"], cwd=clone, env=env, capture_output=True, text=True, timeout=300
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr

        # the README's first events, as written (the HTTP one to this run's port)
        block = readme.example("gateway-events")
        sent = _sent_events(block)
        assert set(sent) == {"cli-demo", "curl-demo"}, sent
        script = block.replace("http://127.0.0.1:8080/", base + "/")
        events_env = {**env, "REDIS_CONN_STRING": redis_url}
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=clone,
            env=events_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        pushed, answered = done.stdout.strip().splitlines()
        assert pushed.split()[-1].isdigit(), done.stdout  # RPUSH answers the list's length
        assert json.loads(answered)["accepted"] == 1, answered  # a wrong key answers 401 here
        for conversation, messages in sent.items():
            assert _read_back(base, key, conversation) == messages, conversation
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGINT)  # Ctrl-C
        try:
            code = up.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            raise
    text = log.read_text(errors="replace")
    assert code == 0, text[-4000:]
    assert "nothing queued was lost" in text, text[-4000:]
    assert "Traceback" not in text, text[-4000:]

    # 2. the test command, reduced: its install as written, its pytest on the install tests
    #    (which build MES with this venv's pip and setuptools)
    reduced = test_cmd + " tests/test_install.py -p no:xdist -p no:cacheprovider -q"
    done = subprocess.run(
        ["bash", "-c", reduced], cwd=clone, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert re.search(r"\b2 passed\b", done.stdout), done.stdout[-2000:]
