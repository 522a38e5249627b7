"""The map matches the tree: ARCHITECTURE.md and the README's Layout name files that exist,
the import contracts cover every module of the package, and no module imports another
module's private name (``from mes.x import _y``)."""

from __future__ import annotations

import ast
import configparser
import pathlib
import re
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
# the folders of the package, and the package each installs as (pyproject.toml)
FOLDERS = {"mes": "mes", "producer": "mes.producer", "worker": "mes.worker", "schemas": "mes.schemas"}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def _paths_named(text: str) -> set[str]:
    """Backticked repository paths such as `mes/storage/plan.py` or `worker/`."""
    named = set(re.findall(r"`((?:mes|producer|worker|schemas|bench|tests|\.ci)/[\w./*-]*)`", text))
    return {p for p in named if "*" not in p}


def test_architecture_and_layout_name_only_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    for source, text in (("ARCHITECTURE.md", (ROOT / "ARCHITECTURE.md").read_text()), ("README", layout)):
        named = _paths_named(text)
        assert named, source
        missing = sorted(p for p in named if not (ROOT / p).exists())
        assert not missing, f"{source} names {missing}"


def test_every_module_of_the_package_sits_in_a_layer():
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    layers = config["importlinter:contract:layers"]["layers"]
    named = {m.strip() for line in layers.splitlines() for m in re.split(r"[|:]", line) if m.strip()}
    modules = _modules()
    assert named <= set(modules), named - set(modules)
    top = {m for m in modules if m.count(".") == 1}  # mes.x: each a module or a package
    assert top - named == set(), f"not in any layer of .importlinter: {sorted(top - named)}"


def test_no_module_imports_another_modules_private_name():
    found = []
    for module, path in _modules().items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mes")):
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                # a package's __init__ may re-export its own modules' names
                if private and not (path.name == "__init__.py" and node.module.startswith(package + ".")):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{alias.name}")
    assert not found, "\n".join(found)


def _reads_a_variable(node: ast.AST) -> str | None:
    """``os.environ["X"]``, ``os.getenv("X")``, ``env.get("X")``, ``env["X"]`` (read, not
    written) for a name MES reads (``MES_*``, ``SQL_*``, ``REDIS_*``, ``TZ``, ``DEBUG``)."""
    name = None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
        if node.func.attr in ("get", "getenv", "pop") and isinstance(node.args[0], ast.Constant):
            name = node.args[0].value
    elif (
        isinstance(node, ast.Subscript)
        and isinstance(node.ctx, ast.Load)
        and isinstance(node.slice, ast.Constant)
    ):
        name = node.slice.value
    if isinstance(name, str) and re.fullmatch(r"(?:MES|SQL|REDIS)_[A-Z_]+|TZ|DEBUG", name):
        return name
    return None


def _found_outside(package: str, found: Callable[[ast.AST], object]) -> list[str]:
    """``file:line: what`` of each node of a module outside ``package`` that ``found`` names."""
    out = []
    for module, path in _modules().items():
        if not module.startswith(package):
            for node in ast.walk(ast.parse(path.read_text())):
                what = found(node)
                if what:
                    out.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}: {what}")
    return out


def test_every_environment_variable_is_read_in_the_settings_module():
    found = _found_outside("mes.config", _reads_a_variable)
    assert not found, "\n".join(found)


DIALECTS = {"mysql", "mariadb", "postgresql", "postgres", "sqlite"}


def _names_a_dialect(node: ast.AST) -> bool:
    """A comparison with a dialect's name (``x == "mysql"``, ``x in ("mysql", ...)``) or a
    SQLAlchemy type variant for one (``.with_variant(t, "sqlite")``)."""

    def constants(n: ast.AST) -> set[object]:
        if isinstance(n, ast.Constant):
            return {n.value}
        if isinstance(n, ast.Tuple | ast.List | ast.Set):
            return {e.value for e in n.elts if isinstance(e, ast.Constant)}
        return set()

    if isinstance(node, ast.Compare):
        return any(constants(n) & DIALECTS for n in [node.left, *node.comparators])
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "with_variant"
    ):
        return any(constants(a) & DIALECTS for a in node.args)
    return False


def test_no_dialect_name_is_compared_outside_the_backends():
    found = _found_outside("mes.storage.backends", _names_a_dialect)
    assert not found, "\n".join(found)


def test_pyproject_lists_every_package_of_the_tree():
    """setuptools installs only the packages pyproject.toml names: a new folder left out
    would be missing from the wheel (and from `mes`)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {m for m, p in _modules().items() if p.name == "__init__.py"}
    assert listed == packages, (packages - listed, listed - packages)


def _builds_a_redis_client(node: ast.AST) -> str | None:
    """A ``Redis(...)``, ``Redis.from_url(...)`` or ``Sentinel(...)`` call."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name in ("Redis", "StrictRedis", "Sentinel"):
        return f"{name}(...)"
    if name == "from_url" and isinstance(func, ast.Attribute) and "Redis" in ast.unparse(func.value):
        return "Redis.from_url(...)"
    return None


def test_redis_clients_are_built_in_one_place():
    """Every Redis client (plain, TLS, Sentinel) comes from ``mes.redis_conn.connect``."""
    found = _found_outside("mes.redis_conn", _builds_a_redis_client)
    assert not found, "\n".join(found)


def _stats_names(tree: ast.AST) -> set[str]:
    """Names a module binds to the ``daily_stats`` table (``s = catalog.daily_stats``,
    ``a, b = catalog.x, catalog.daily_stats``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = (
                    zip(target.elts, node.value.elts, strict=False)
                    if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                    else [(target, node.value)]
                )
                for t, v in pairs:
                    if isinstance(t, ast.Name) and isinstance(v, ast.Attribute) and v.attr == "daily_stats":
                        names.add(t.id)
    return names


def _rollup_writes(path: pathlib.Path) -> list[str]:
    """``line: call`` of each ``insert``/``update``/``delete``/``upsert`` given the
    ``daily_stats`` table, directly or through a name bound to it."""
    tree = ast.parse(path.read_text())
    aliases = _stats_names(tree)
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("insert", "update", "delete", "upsert") and any(
            (isinstance(a, ast.Attribute) and a.attr == "daily_stats")
            or (isinstance(a, ast.Name) and a.id in aliases)
            for a in node.args
        ):
            out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    return out


def test_the_rollups_are_written_by_the_rollup_module():
    """``mes_daily_stats`` changes through ``mes.storage.rollup`` only, but for the writer's
    bulk upsert of a batch's ``Rollup`` (the hot path: one statement per batch)."""
    found = [w for m, p in _modules().items() if m != "mes.storage.rollup" for w in _rollup_writes(p)]
    assert len(found) == 1 and found[0].startswith("mes/storage/writer.py:"), "\n".join(found)
