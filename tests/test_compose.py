"""docker-compose.yml renders DSNs MES reads as meant: docker-compose itself renders the
file (``config``), with no .env and with .env copied from .env.example, and MES's own
parsers (mes/config/dsn.py through ``Settings.from_env``) read every service's environment.
Checking only that the file parses let a DSN through whose nested default docker-compose
1.x cut at the first ``}`` (password ``123456@tcp(mysql:3306)/new-api-mes``, database
``new-api-mes}``). ``.ci/compose-check`` installs docker-compose (v1.29, Debian's)."""

from __future__ import annotations

import pathlib
import re
import shlex
import shutil
import subprocess
from typing import Any

import yaml
from redis.connection import parse_url

from mes.config.settings import Settings

from . import readme
from .conftest import missing

ROOT = pathlib.Path(__file__).parent.parent
MES_SERVICES = ("worker", "api")


def _render(tmp_path: pathlib.Path, *, dot_env: str | None, profile: str | None = None) -> dict[str, Any]:
    """docker-compose's rendering of a copy of the file, with only this .env (None: none)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        missing("docker-compose", "not on PATH (.ci/compose-check installs it)")
    work = tmp_path / ("with-env" if dot_env is not None else "no-env")
    work.mkdir(exist_ok=True)
    shutil.copy(ROOT / "docker-compose.yml", work / "docker-compose.yml")
    if dot_env is not None:
        (work / ".env").write_text(dot_env)
    args = [binary, "-f", str(work / "docker-compose.yml")]
    if profile:
        args += ["--profile", profile]
    # Nothing of this process's environment (a CI's SQL_DSN, TZ, ...) may reach the rendering.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([*args, "config"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def _dot_env(**override: str) -> str:
    text = (ROOT / ".env.example").read_text()
    for name, value in override.items():
        text, n = re.subn(rf"^{name}=.*$", f"{name}={value}", text, flags=re.M)
        assert n == 1, name
    return text


def _settings(rendered: dict[str, Any], service: str) -> tuple[Settings, dict[str, str]]:
    env = {k: "" if v is None else str(v) for k, v in rendered["services"][service]["environment"].items()}
    return Settings.from_env(env), env


def _check_mysql(rendered: dict[str, Any]) -> None:
    password = str(rendered["services"]["mysql"]["environment"]["MYSQL_ROOT_PASSWORD"])
    for service in MES_SERVICES:
        settings, env = _settings(rendered, service)
        assert settings.main_db is not None, service
        for db, database in ((settings.main_db, "new-api"), (settings.database.db, "new-api-mes")):
            found = (db.backend, db.host, db.port, db.database, db.user, db.password)
            assert found == ("mysql", "mysql", 3306, database, "root", password), (service, found)
        assert settings.queue.redis_url is not None, service
        redis_at = parse_url(settings.queue.redis_url)  # as redis-py reads it
        assert (redis_at.get("host"), redis_at.get("port"), redis_at.get("db")) == ("redis", 6379, 0), service
        assert env["MES_DATA_DIR"] == "/data"


def test_compose_without_dot_env_renders_dsns_mes_reads(tmp_path):
    _check_mysql(_render(tmp_path, dot_env=None))


def test_compose_with_the_example_dot_env_renders_dsns_mes_reads(tmp_path):
    _check_mysql(_render(tmp_path, dot_env=_dot_env()))


def test_compose_with_the_example_postgres_dsn(tmp_path):
    """.env.example's commented PostgreSQL line, with the postgres profile."""
    (line,) = re.findall(r"^#\s*MES_SQL_DSN=(postgres://\S+)$", (ROOT / ".env.example").read_text(), re.M)
    rendered = _render(tmp_path, dot_env=_dot_env(MES_SQL_DSN=line), profile="postgres")
    password = str(rendered["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"])
    database = rendered["services"]["postgres"]["environment"]["POSTGRES_DB"]
    for service in MES_SERVICES:
        settings, _ = _settings(rendered, service)
        db = settings.database.db
        found = (db.backend, db.host, db.port, db.database, db.user, db.password)
        assert found == ("postgresql", "postgres", 5432, database, "postgres", password), (service, found)
        assert settings.main_db is not None and settings.main_db.database == "new-api"


def test_readme_docker_commands_name_what_the_file_and_mes_have(tmp_path):
    """The README's Docker commands need a Docker daemon (CI has none): each is checked
    against docker-compose's rendering with its own options, not run."""
    from mes.cli import main

    checked = 0
    for line in readme.commands(readme.example("docker")):
        words = shlex.split(line.split("#", 1)[0])
        assert words[:2] == ["docker", "compose"], line
        words = words[2:]
        profile = None
        if words[0] == "--profile":
            profile, words = words[1], words[2:]
        rendered = _render(tmp_path, dot_env=_dot_env(), profile=profile)
        services = rendered["services"]
        if profile:
            assert any(profile in s.get("profiles", []) for s in services.values()), line
        command, args = words[0], words[1:]
        if command == "up":
            assert args[0] == "-d", line
            for name in args[args.index("--scale") + 1 :: 2] if "--scale" in args else []:
                assert name.split("=")[0] in services, line
        else:
            assert command == "exec", line
            service, program, sub = args[0], args[1], args[2]
            assert service in services and program == "mes" and sub in main.commands, line
        checked += 1
    assert checked == 4
