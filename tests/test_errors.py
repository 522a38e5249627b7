"""One error tree (``mes.errors``): every error class MES raises on purpose is drawn in it
with the HTTP status the API answers and the exit code the CLI ends with, and both doors
use those, not a mapping of their own."""

from __future__ import annotations

import ast
import pathlib
import re

import click
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient

import mes.errors as errors
from mes.api.handlers import install_error_handlers
from mes.cli.common import handle_errors

ROOT = pathlib.Path(__file__).resolve().parent.parent
TREE = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.MESError)]


def _drawn() -> dict[str, tuple[int, int]]:
    """The table in the module's docstring: class -> (HTTP status, exit code)."""
    doc = errors.__doc__ or ""
    return {m[1]: (int(m[2]), int(m[3])) for m in re.finditer(r"(\w+)\s+(\d{3})\s+(\d)\b", doc)}


def test_every_class_is_drawn_with_its_status_and_exit_code():
    drawn = _drawn()
    assert {c.__name__ for c in TREE} == set(drawn)
    for cls in TREE:
        assert (cls.http_status, cls.exit_code) == drawn[cls.__name__], cls.__name__


def test_no_error_class_is_defined_outside_the_tree_but_the_documented_ones():
    """ApiError and AuthError live in the API only; NotReplicated must be a redis error."""
    outside = set()
    for folder in ("mes", "producer", "worker", "schemas"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "errors.py" and path.parent.name == "mes":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and re.search(
                    r"(Error|Exception|Unavailable|Lost)$", node.name
                ):
                    outside.add(node.name)
    private = {n for n in outside if n.startswith("_")}  # control flow inside one module
    assert outside - private == {"ApiError", "AuthError"}
    import redis

    from mes.producer.transport import NotReplicated

    assert issubclass(NotReplicated, redis.ConnectionError)


@pytest.mark.parametrize("cls", TREE, ids=lambda c: c.__name__)
def test_the_api_answers_each_class_with_its_status(cls):
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise _make(cls, "db at 10.0.0.7:3306 refused")

    r = TestClient(app).get("/boom")
    assert r.status_code == cls.http_status
    body = r.json()["error"]
    if cls.http_status >= 500:
        assert "10.0.0.7" not in r.text  # a backend's text may name hosts
        assert body["code"] == "unavailable"
    else:
        assert "refused" in body["message"]


@pytest.mark.parametrize("cls", TREE, ids=lambda c: c.__name__)
def test_the_cli_ends_with_each_class_exit_code_and_one_line(cls):
    @click.command()
    @handle_errors
    def boom() -> None:
        raise _make(cls, "something to say")

    done = CliRunner().invoke(boom)
    assert done.exit_code == cls.exit_code
    assert done.output.count("\n") == 1 and "something to say" in done.output
    assert "Traceback" not in done.output


def _make(cls: type[errors.MESError], text: str) -> errors.MESError:
    if issubclass(cls, errors.EventTooLarge):
        return cls(text, None, size=2, max_bytes=1)
    return cls(text)
