"""Every example in README.md is run by a test, as the README writes it (see tests/readme.py:
each runnable block is marked ``<!-- example: NAME -->`` and read from the README).

Here: that no runnable block goes unmarked or unrun, that CI runs the quick start's test
command, and the two Python examples (the producer, then the reader) against a real Redis,
a real ``mes worker`` and SQLite. The quick start and the gateway examples run in
tests/test_quickstart.py, the Docker commands are checked in tests/test_compose.py."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap

from mes.config.settings import DatabaseSettings
from mes.reader import HistoryReader
from mes.storage import Storage

from . import readme

ROOT = pathlib.Path(__file__).parent.parent
HERE = pathlib.Path(__file__).parent
# Each example and the test file that runs it.
RUNNERS = {
    "quick-start": "test_quickstart.py",
    "gateway-events": "test_quickstart.py",
    "python-producer": "test_readme.py",
    "python-reader": "test_readme.py",
    "docker": "test_compose.py",
    "capture-rules": "test_privacy.py",
    "redactor-plugin": "test_privacy.py",
}
_CONFIG_PREFIXES = ("MES_", "SQL_", "REDIS_")


def test_every_runnable_block_is_an_example_a_test_runs():
    found = readme.blocks()
    unmarked = [line for name, info, _, line in found if info and name is None]
    assert not unmarked, (
        f"README.md blocks with an info string but no <!-- example: NAME --> (lines {unmarked})"
    )
    names = [name for name, _, _, _ in found if name is not None]
    assert sorted(names) == sorted(RUNNERS), "every example has one runner here, and every runner an example"
    for name, runner in RUNNERS.items():
        assert f'example("{name}")' in (HERE / runner).read_text(), (name, runner)


def test_ci_runs_the_readme_test_command():
    """The quick start's second command: CI installs the test extra and runs its pytest."""
    _, test_cmd = readme.commands(readme.example("quick-start"))
    install, pytest_cmd = (part.strip() for part in test_cmd.split("&&"))
    assert re.fullmatch(r"pip install -e '\.\[test\]'", install), install
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert pytest_cmd in [line.strip() for line in ci], f".ci/run does not run {pytest_cmd!r}"
    assert any(re.search(r"pip\"? install .*-e '\.\[(\w+,)*test\b", line) for line in ci)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_PREFIXES)}
    env.update(extra)
    return env


def _run_python(code: str, env: dict[str, str], cwd: pathlib.Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


# What the examples leave to the gateway: the request's values.
PRODUCER_VALUES = textwrap.dedent("""
    conversation_id = "readme-python"
    messages = [{"role": "user", "content": "Hi"}]
    response = {"choices": [{"message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    model_name, user_id, token_id, channel_id, client_ip = "gpt-4o", 1, 2, 3, "203.0.113.7"
    error_code, error_message = 429, "rate limited"
""")


def test_python_examples_record_and_read_back(redis_server, tmp_path):
    db = f"sqlite:///{tmp_path / 'mes.db'}"
    env = _env(
        REDIS_CONN_STRING=redis_server.url,
        MES_SQL_DSN=db,
        MES_DATA_DIR=str(tmp_path / "data"),
        MES_SPOOL_DIR=str(tmp_path / "spool"),
    )
    # The producer example, in a process of its own: it returns at once, and the flush at
    # interpreter exit (which the README promises) takes the events to Redis.
    _run_python(PRODUCER_VALUES + readme.example("python-producer"), env, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "mes", "worker", "--burst"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")

    reader = HistoryReader(Storage.open(DatabaseSettings.from_env({"MES_SQL_DSN": db})))
    try:
        messages = reader.get_conversation_messages("readme-python", 50, user_id=1)
        assert messages is not None
        assert [(m["role"], m["content"]) for m in messages] == [("user", "Hi"), ("assistant", "Hello!")]
        errors = reader.get_user_errors(1).items
        assert [(e["error_code"], e["error_message"]) for e in errors] == [(429, "rate limited")], errors
        event_id = messages[-1]["event_id"]

        # The reader example, as written (it ends by deleting the conversation).
        values = f"user_id, conversation_id, event_id = 1, 'readme-python', {event_id!r}\n"
        _run_python(values + readme.example("python-reader"), env, tmp_path)
        assert reader.get_conversation_messages("readme-python", 50, user_id=1) is None
        assert reader.get_user_conversations(1).items == []
    finally:
        reader.storage.close()
