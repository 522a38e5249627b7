"""The capture policy: how much of each event MES keeps.

Three levels, ordered so that "lower" is ``min``:

* ``full`` (the default, the seed's behaviour): everything the event carries;
* ``metadata``: every row, with its role, model, tokens, times and ids, but no content
  (stored as NULL; the read API says ``"content_stored": false``);
* ``none``: no message rows; only the rollups and the index counts, and one row of counts
  per request to recount them from (``mes_uncaptured``: see ``storage.tables``).

An event's level is the level of the first rule that matches it, else the policy's
default; the event's own ``capture`` field may then lower that level, never raise it.
The worker asks once per event, before anything is written; the producer never does
(it stays off the gateway's request path). This module only decides: it reads no
environment variable and writes nothing.

Rules come from a TOML file (``MES_CAPTURE_RULES``), checked when MES starts; each
problem is one line naming the file, the rule's number and the field
(``deploy/capture-rules.example.toml`` is an example)::

    default = "full"              # optional; without it, MES_CAPTURE

    [[rule]]                      # matches when every field it names matches
    capture = "metadata"
    user_id = [42, 43]            # user_id, token_id, channel_id: an id or a list of ids

    [[rule]]
    capture = "none"
    model = "gpt-4o-*"            # model (the event's model_name), group: a name, a glob or a list

Two choices the contract leaves to this module:

* **The New API group.** The event contract has no ``group`` field; a gateway that wants
  rules by group sends it in ``metadata`` as ``"group": "<name>"`` (a string). An event
  without one matches no rule that names ``group``, not even ``group = "*"``.
* **An unknown per-event value** (``"capture": "metdata"``, a number, ...) counts as
  ``metadata``: the gateway asked for less than everything, and ``metadata`` is the
  strictest level that still keeps the row saying the request happened (``none`` would
  drop rows on a typo). It lowers like any other value, so it never raises a level. The
  contract is meant to refuse such values before they get here; this is the fallback.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import fnmatch
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from mes.errors import ConfigError

__all__ = ["Capture", "CapturePolicy", "Rule", "load_rules", "parse_rules"]

_USE = "use full, metadata or none"


class Capture(enum.IntEnum):
    """How much of an event MES keeps; a lower level keeps less (``min`` lowers)."""

    NONE = 0
    METADATA = 1
    FULL = 2

    @property
    def label(self) -> str:
        """The level as it is written in settings, rules and events: ``"metadata"``."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str, name: str) -> Capture:
        """``full``, ``metadata`` or ``none`` (any case, spaces around ignored); anything
        else raises a one-line :class:`ConfigError` naming the variable ``name``."""
        level = _LEVELS.get(text.strip().lower())
        if level is None:
            raise ConfigError(f"{name}={text!r} is not a capture level ({_USE})")
        return level


_LEVELS: dict[str, Capture] = {level.label: level for level in Capture}

_INT_FIELDS = ("user_id", "token_id", "channel_id")
_TEXT_FIELDS = ("model", "group")
_RULE_KEYS = ("capture", *_INT_FIELDS, *_TEXT_FIELDS)
_FILE_KEYS = ("default", "rule")
# an id field's value when the event leaves it out: the contract's default (user_id is required)
_ID_DEFAULTS: dict[str, int | None] = {"user_id": None, "token_id": 0, "channel_id": 0}
_GLOB_CHARS = frozenset("*?[")
_CACHE_SIZE = 4096  # distinct model names (groups) remembered per field; gateways use tens

_Test = Callable[[Any], object]  # truthy when the value matches
_Reader = Callable[[Mapping[str, Any]], str | None]  # an event's value for model or group


def _model(event: Mapping[str, Any]) -> str | None:
    """What a rule's ``model`` matches: ``model_name`` ("" when absent)."""
    value = event.get("model_name", "")
    return value if isinstance(value, str) else None


def _group(event: Mapping[str, Any]) -> str | None:
    """What a rule's ``group`` matches: ``metadata.group``, when it is a string."""
    metadata = event.get("metadata")
    value = metadata.get("group") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) else None


_TEXT_READERS: dict[str, _Reader] = {"model": _model, "group": _group}


def _read(event: Mapping[str, Any], field: str) -> Any:
    """The event's value for a rule's ``field``; ``None`` when it has none, which no rule matches."""
    if field in _ID_DEFAULTS:
        return event.get(field, _ID_DEFAULTS[field])
    return _TEXT_READERS[field](event)


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """Events that get ``capture``. A rule matches an event when every field it names
    matches (``None``: the field is not named): ``user_id``, ``token_id``, ``channel_id``
    when the event's id is one of the set; ``model`` (the event's ``model_name``) and
    ``group`` (its ``metadata.group``) when one of the patterns matches, as fnmatch globs
    (``*``, ``?``, ``[...]``), case-sensitive. A rule that names no field matches every
    event. Raises :class:`ConfigError` for an empty set, a negative id or a bad glob."""

    capture: Capture
    user_id: frozenset[int] | None = None
    token_id: frozenset[int] | None = None
    channel_id: frozenset[int] | None = None
    model: tuple[str, ...] | None = None
    group: tuple[str, ...] | None = None
    _tests: dict[str, _Test] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tests: dict[str, _Test] = {}
        for field in _INT_FIELDS:
            ids: frozenset[int] | None = getattr(self, field)
            if ids is not None:
                tests[field] = _id_test(field, ids)
        for field in _TEXT_FIELDS:
            patterns: tuple[str, ...] | None = getattr(self, field)
            if patterns is not None:
                tests[field] = _glob_test(field, patterns)
        object.__setattr__(self, "_tests", tests)

    @property
    def matches_everything(self) -> bool:
        """True when the rule names no field."""
        return not self._tests

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether the rule matches ``event`` (a dict the contract accepted). The plain
        definition; :class:`CapturePolicy` finds the first match faster, with the same answer."""
        for field, test in self._tests.items():
            value = _read(event, field)
            if value is None or not test(value):
                return False
        return True


class _FirstMatch:
    """The first rule that matches an event, in a time that hardly grows with the number
    of rules. Bit ``i`` of a mask stands for rule ``i``. Each field some rule names narrows
    the candidates to the rules that do not name it or whose test passes for the event's
    value: an id is looked up in a dict of masks; a model name or group runs the rules'
    globs once per distinct value (then cached). The lowest bit left is the first match.
    Safe to share between threads: two that race on the cache compute the same mask."""

    __slots__ = ("_all", "_ids", "_levels", "_texts")

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self._all = (1 << len(rules)) - 1
        self._levels = tuple(rule.capture for rule in rules)
        # (field, absent value, rules not naming it, id -> rules whose set holds it)
        self._ids: list[tuple[str, int | None, int, dict[int, int]]] = []
        # (the event's value, rules not naming it, [(bit, test)], value -> mask of the candidates left)
        self._texts: list[tuple[_Reader, int, list[tuple[int, _Test]], dict[str | None, int]]] = []
        for field in (*_INT_FIELDS, *_TEXT_FIELDS):
            named = [(1 << i, rule) for i, rule in enumerate(rules) if field in rule._tests]
            if not named:
                continue
            free = self._all & ~sum(bit for bit, _ in named)
            if field in _ID_DEFAULTS:
                by_id: dict[int, int] = {}
                for bit, rule in named:
                    ids: frozenset[int] = getattr(rule, field)
                    for i in ids:
                        by_id[i] = by_id.get(i, 0) | bit
                self._ids.append((field, _ID_DEFAULTS[field], free, by_id))
            else:
                tests = [(bit, rule._tests[field]) for bit, rule in named]
                self._texts.append((_TEXT_READERS[field], free, tests, {}))

    def __call__(self, event: Mapping[str, Any]) -> Capture | None:
        left = self._all
        for field, absent, free, by_id in self._ids:
            left &= free | by_id.get(event.get(field, absent), 0)  # an absent user_id (None): no id
            if not left:
                return None
        for read, free, tests, cache in self._texts:
            value = read(event)
            bits = cache.get(value)
            if bits is None:
                bits = free
                if value is not None:
                    for bit, test in tests:
                        if test(value):
                            bits |= bit
                if len(cache) >= _CACHE_SIZE:
                    cache.clear()  # a flood of distinct names: forget, never grow without bound
                cache[value] = bits
            left &= bits
            if not left:
                return None
        return self._levels[(left & -left).bit_length() - 1]


@dataclasses.dataclass(frozen=True, slots=True)
class CapturePolicy:
    """The rules, in order, and the level of an event no rule matches. Raises
    :class:`ConfigError` when a rule other than the last names no field (it would match
    every event and hide the rules after it)."""

    default: Capture = Capture.FULL
    rules: tuple[Rule, ...] = ()
    _first: _FirstMatch | None = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for number, rule in enumerate(self.rules[:-1], 1):
            if rule.matches_everything:
                raise ConfigError(
                    f"rule {number}: names no field, so it matches every event and the rules "
                    "after it never apply (name a field such as user_id or model, or make it the last rule)"
                )
        object.__setattr__(self, "_first", _FirstMatch(self.rules) if self.rules else None)

    def may_lower(self) -> bool:
        """Whether some event may be kept at less than ``full`` (by the default or a rule)."""
        return self.default < Capture.FULL or any(rule.capture < Capture.FULL for rule in self.rules)

    def level(self, event: Mapping[str, Any]) -> Capture:
        """The level at which to store ``event`` (a dict the contract accepted): the first
        matching rule's, else the default, lowered (never raised) by the event's own
        ``capture`` field."""
        level = self.default
        if self._first is not None:
            matched = self._first(event)
            if matched is not None:
                level = matched
        asked = event.get("capture")
        if asked is None:
            return level
        # an unknown value counts as metadata: see the module's docstring
        lowered = _LEVELS.get(asked, Capture.METADATA) if isinstance(asked, str) else Capture.METADATA
        return lowered if lowered < level else level


def _id_test(field: str, ids: frozenset[int]) -> _Test:
    if not ids:
        raise ConfigError(f"{field}: no ids, so the rule would match no event")
    negative = sorted(i for i in ids if i < 0)
    if negative:
        raise ConfigError(f"{field}: {negative[0]} is not an id (New API's ids are 0 or more)")
    return ids.__contains__


def _glob_test(field: str, patterns: tuple[str, ...]) -> _Test:
    if not patterns:
        raise ConfigError(f"{field}: no names or patterns, so the rule would match no event")
    for pattern in patterns:
        problem = _glob_problem(pattern)
        if problem:
            raise ConfigError(f"{field}: {problem}")
    if not any(_GLOB_CHARS.intersection(pattern) for pattern in patterns):
        return frozenset(patterns).__contains__  # plain names: a set is several times faster
    return re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns)).match


def _glob_problem(pattern: str) -> str | None:
    if _unclosed_bracket(pattern):
        # fnmatch would read it as a literal '[': in a model or group name, a typo
        return f"{pattern!r} has a '[' without its ']' (write [[] for a literal '[')"
    # fnmatch turns a class of reversed ranges ("[z-a]") into a regex that matches nothing
    if "(?!)" in fnmatch.translate(pattern):
        return f"{pattern!r} can match nothing (a reversed range such as [z-a]?)"
    return None


def _unclosed_bracket(pattern: str) -> bool:
    """A '[' that fnmatch finds no closing ']' for (read as fnmatch reads a class)."""
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] != "[":
            i += 1
            continue
        j = i + 1
        if j < n and pattern[j] == "!":
            j += 1
        if j < n and pattern[j] == "]":  # a ']' first in a class is a literal
            j += 1
        j = pattern.find("]", j)
        if j < 0:
            return True
        i = j + 1
    return False


def load_rules(
    path: str | os.PathLike[str], *, default: Capture = Capture.FULL, variable: str = "MES_CAPTURE_RULES"
) -> CapturePolicy:
    """The policy of the rules file at ``path``; ``default`` (``MES_CAPTURE``) unless the
    file sets its own. Every problem (unreadable, not TOML, an unknown key, a wrong type, a
    bad level or glob, a rule before the last that matches everything) raises a one-line
    :class:`ConfigError` that starts with ``variable=path``."""
    source = f"{variable}={os.fspath(path)}"
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: the file is not UTF-8 text") from None
    return parse_rules(text, source=source, default=default)


def parse_rules(
    text: str, *, source: str = "capture rules", default: Capture = Capture.FULL
) -> CapturePolicy:
    """:func:`load_rules` on the text of a rules file; ``source`` starts each error line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {' '.join(str(exc).split())}") from None
    for key in data:
        if key not in _FILE_KEYS:
            raise ConfigError(
                f"{source}: unknown key {key!r}{_did_you_mean(key, _FILE_KEYS)} "
                "(a rules file holds default and [[rule]] tables)"
            )
    if "default" in data:
        default = _level(data["default"], f"{source}: default")
    entries = data.get("rule", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: rule: write each rule as a [[rule]] table, not [rule] or rule = ...")
    rules = tuple(_rule(entry, f"{source}: rule {number}") for number, entry in enumerate(entries, 1))
    try:
        return CapturePolicy(default, rules)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _rule(entry: object, where: str) -> Rule:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: not a table (write it as [[rule]] followed by key = value lines)")
    for key in entry:
        if key not in _RULE_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r}{_did_you_mean(key, _RULE_KEYS)} "
                f"(a rule has {', '.join(_RULE_KEYS)})"
            )
    if "capture" not in entry:
        raise ConfigError(f"{where}: capture: missing ({_USE})")
    fields: dict[str, Any] = {"capture": _level(entry["capture"], f"{where}: capture")}
    for field in _INT_FIELDS:
        if field in entry:
            fields[field] = _ids(entry[field], f"{where}: {field}")
    for field in _TEXT_FIELDS:
        if field in entry:
            fields[field] = _patterns(entry[field], f"{where}: {field}")
    try:
        return Rule(**fields)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _level(value: object, where: str) -> Capture:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a level in quotes ({_USE}), got {value!r}")
    level = _LEVELS.get(value.strip().lower())
    if level is None:
        raise ConfigError(f"{where}: {value!r} is not a capture level ({_USE})")
    return level


def _ids(value: object, where: str) -> frozenset[int]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ConfigError(f"{where}: expected an id (a whole number) or a list of ids, got {item!r}")
    return frozenset(items)


def _patterns(value: object, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(
                f'{where}: expected a name or glob in quotes (such as "gpt-4o*" or "vip") or a list of them, got {item!r}'
            )
    return tuple(items)


def _did_you_mean(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f": did you mean {close[0]!r}?" if close else ""
