"""Redaction: personal data and secrets in message text become typed placeholders before
MES stores the text.

Built-in detectors (``MES_REDACT=default|off|email,phone,...``), in the order they run::

    name    placeholder  matches
    secret  [SECRET]     PEM private key blocks, JWTs, sk-/sk-proj-/sk-ant- keys, AWS key ids
    email   [EMAIL]      local@domain.tld (a letters-only TLD of 2+ letters)
    cn_id   [CN_ID]      18-character PRC resident identity numbers
    card    [CARD]       payment card numbers: 13-19 digits that pass Luhn
    phone   [PHONE]      +<8-15 digits> international numbers; mainland-China mobiles
    ip      [IP]         IPv6 and IPv4 addresses

The order settles overlaps: a secret first (a PEM block or a token holds digit runs and
anything else; it goes as one), then e-mail (``13812345678@139.com`` is one address, not
a phone number), then the identity number (its checksum is a stronger test than Luhn,
which one 18-digit number in ten passes), the card before the phone, the address last
(within ``ip``, IPv6 before IPv4: ``::ffff:192.0.2.1`` is one address).

What each detector takes, and the near-misses it leaves alone:

* **secret**: ``-----BEGIN [LABEL ]PRIVATE KEY-----`` to its ``-----END`` line (a block
  cut short: the BEGIN line and the base64 and header lines after it); a JWT, ``eyJ`` and
  three base64url parts; ``sk-`` and 20 or more of ``[A-Za-z0-9_-]`` holding a digit and a
  letter (``sk-abc123`` is too short, ``task-...`` is a word); ``AKIA``/``ASIA`` and 16 of
  ``[A-Z0-9]``, standing alone. Tokens never start inside a longer token.
* **email**: an ASCII local part (up to 64 of ``[A-Za-z0-9._%+-]``) at a dotted ASCII
  domain; ``user@localhost`` (no TLD), ``a@b.c``, ``@handle`` and ``icon@2x.png`` are not
  addresses.
* **cn_id**: 17 digits and a digit or ``X``, standing alone, not starting with 0, a real
  birth date (YYYYMMDD, 1900-2099) at digits 7-14 and the ISO 7064 MOD 11-2 check
  character. A wrong check character, 31 February, a 19-digit run: left alone.
* **card**: 13-19 digits written as one run or as groups of 4-8 digits (the last 3-8)
  with single spaces or single dashes (not both), starting with 2-6 (every major
  network: Visa 4, Mastercard 2/5, Amex and JCB 3, UnionPay and Discover 6; a ``1...``
  millisecond timestamp is not a card) and passing Luhn.
* **phone**: ``+`` and 8-15 digits with spaces, dots, dashes or parentheses between
  (whatever is before the ``+``); a mobile ``1[3-9]`` + 9 digits as one run or as 3-4-4
  groups.
* **ip**: IPv4 with four parts each <= 255 without leading zeros, IPv6 in any form
  ``ipaddress`` accepts (``::`` alone is not taken); both confirmed by ``ipaddress``.

"Standing alone" (every digit detector and the IP addresses): no ASCII letter, digit or
``_`` touches the match, nor a dot followed by a digit, so nothing is found inside a
longer number, a word, a decimal (``3.4111111111111111``) or a dotted version
(``1.2.3.4.5``). A grouped number is one number: ``4111 1111 1111 1111 12`` has 18 digits
and is not a card; a run standing alone inside it (``13812345678`` in ``13812345678 2``)
still counts. Placeholders hold no digit, ``@``, ``-`` or ``:``, so redacting a redacted
text changes nothing.

**Cost.** Most texts hold nothing to find, so each detector first asks for a necessary
condition, with ``in`` (a single character is a memchr): ``@`` for e-mail; ``sk-``,
``-----BEGIN``, ``eyJ``, ``AKIA``/``ASIA`` for secrets; a digit for the numbers and IPv4;
``:`` for IPv6. A text that passes one is searched in its ASCII projection
(``encode("ascii", "replace")``: a byte a character, at the text's own offsets), the digit
detectors in a copy of it with every digit as ``0``, so that each pattern starts with a
literal (the regex engine scans for a literal about ten times faster than for ``[0-9]``),
each behind a further gate (``0000``, ``0.0``, ``+0``). ``bench/redact.py`` prints the cost.

**A plug-in** (``MES_REDACTOR=package.module:function``, :func:`load_plugin`) runs after
the built-ins on every text they return (empty texts excepted). It takes the text and
returns the redacted text, or the text and its counts (``{"person": 2}``); a plug-in that
returns a text only is counted as ``plugin``: the number of texts it changed. What it
raises is raised. With Microsoft Presidio (``presidio-analyzer``, ``presidio-anonymizer``)::

    # mypresidio.py; MES_REDACTOR=mypresidio:redact
    from presidio_analyzer import AnalyzerEngine
    from presidio_anonymizer import AnonymizerEngine

    analyzer, anonymizer = AnalyzerEngine(), AnonymizerEngine()

    def redact(text):
        found = analyzer.analyze(text=text, language="en", entities=["PERSON", "LOCATION"])
        counts = {}
        for r in found:
            counts[r.entity_type.lower()] = counts.get(r.entity_type.lower(), 0) + 1
        return anonymizer.anonymize(text=text, analyzer_results=found).text, counts

This module reads no environment variable: ``parse_redact`` and ``load_plugin`` take
the variables' values, and their errors name the variable.
"""

from __future__ import annotations

import bisect
import datetime as dt
import importlib
import ipaddress
import json
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from mes.errors import ConfigError

__all__ = ["DETECTORS", "PLACEHOLDERS", "Plugin", "Redactor", "load_plugin", "parse_redact"]

PLACEHOLDERS: dict[str, str] = {
    "secret": "[SECRET]",
    "email": "[EMAIL]",
    "cn_id": "[CN_ID]",
    "card": "[CARD]",
    "phone": "[PHONE]",
    "ip": "[IP]",
}
DETECTORS: tuple[str, ...] = tuple(PLACEHOLDERS)  # in the order they run: the default
PLUGIN_COUNT = "plugin"  # the count of a plug-in that returns no counts of its own

# A plug-in: the text in, the redacted text (and, optionally, what it found) out.
Plugin = Callable[[str], str | tuple[str, Mapping[str, int]]]
Span = tuple[int, int]

_WORD = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_DIGIT = frozenset(b"0123456789")
_LOCAL = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._%+-")
_DOT = ord(".")
# digits as b"0", the rest as it is: what the digit patterns search, so that each starts
# with a literal (a literal first is ~10x faster to scan for than a class such as [0-9])
_SHAPE = bytes(48 if 48 <= c <= 57 else c for c in range(256))


def _has_digit(text: str) -> bool:
    # fmt: off
    return ("0" in text or "1" in text or "2" in text or "3" in text or "4" in text
            or "5" in text or "6" in text or "7" in text or "8" in text or "9" in text)
    # fmt: on


def _alone(p: bytes, i: int, j: int) -> bool:
    """``p[i:j]`` is not part of a longer word or number: no ASCII letter, digit or ``_``
    touches it, nor a dot followed by a digit."""
    if i > 0 and (p[i - 1] in _WORD or (p[i - 1] == _DOT and i > 1 and p[i - 2] in _DIGIT)):
        return False
    n = len(p)
    return not (j < n and (p[j] in _WORD or (p[j] == _DOT and j + 1 < n and p[j + 1] in _DIGIT)))


def _merge(found: list[tuple[str, list[Span]]]) -> list[tuple[int, int, str]]:
    """The spans found, named, in text order; a span that overlaps one taken before it
    (found by an earlier detector, or earlier by its own) is dropped."""
    taken: list[tuple[int, int, str]] = []
    for name, spans in found:
        for i, j in spans:
            k = bisect.bisect_left(taken, (i, j, name))
            if (k == 0 or taken[k - 1][1] <= i) and (k == len(taken) or j <= taken[k][0]):
                taken.insert(k, (i, j, name))
    return taken


# --- secret ----------------------------------------------------------------------------

# Each pattern runs in linear time: a block's body stops at the next "-----" (base64 has
# none), a token is tried only where it starts (the lookbehind after the literal), and
# possessive repeats (*+, Python 3.11) never give back.
_PEM = re.compile(
    rb"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----"
    rb"(?:(?:(?!-----).)*+-----END \1PRIVATE KEY-----"  # the whole block; else, cut short: its lines
    rb"|(?:\r?\n(?:[A-Za-z0-9+/=]{4,}+|[A-Za-z-]++: [^\r\n]*+)?(?=\r?\n|\Z))*+)",
    re.S,
)
_JWT = re.compile(rb"eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]{10,}+\.[A-Za-z0-9_-]{2,}+\.[A-Za-z0-9_-]*+")
_SK = re.compile(rb"sk-(?<![A-Za-z0-9_-]sk-)[A-Za-z0-9_-]{20,}+")
_AWS = re.compile(rb"A[KS]IA[A-Z0-9]{16}")
_AWS_GATE = re.compile("A[KS]IA")  # one scan for both prefixes, on the text
_A_DIGIT = re.compile(rb"[0-9]")
_A_LETTER = re.compile(rb"[A-Za-z]")


def _secret_gate(text: str) -> bool:
    return (
        ("-" in text and ("sk-" in text or "-----BEGIN" in text))
        or ("J" in text and "eyJ" in text)
        or ("A" in text and _AWS_GATE.search(text) is not None)
    )


def _secrets(p: bytes) -> list[Span]:
    blocks = [m.span() for m in _PEM.finditer(p)] if b"-----BEGIN" in p else []
    tokens = [m.span() for m in _JWT.finditer(p)] if b"eyJ" in p else []
    if b"sk-" in p:
        for m in _SK.finditer(p):
            i, j = m.span()
            if _A_DIGIT.search(p, i + 3, j) and _A_LETTER.search(p, i + 3, j):
                tokens.append((i, j))
    tokens += [m.span() for m in _AWS.finditer(p) if _alone(p, *m.span())]
    return blocks + sorted(tokens)  # a token inside a block is dropped by _merge


# --- email -----------------------------------------------------------------------------

# from the "@": the domain, its TLD in group 1; the local part is read backwards from it
_AT_DOMAIN = re.compile(
    rb"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,63})(?![A-Za-z0-9_-])"
)
_LOCAL_BACKWARDS = re.compile(rb"[A-Za-z0-9._%+-]{1,64}")
_FILE_TYPES = frozenset({b"png", b"jpg", b"jpeg", b"gif", b"svg", b"webp"})  # icon@2x.png


def _emails(p: bytes) -> list[Span]:
    spans = []
    taken = 0  # where the last address ends: the next one's local part starts after it
    for m in _AT_DOMAIN.finditer(p):
        at = m.start()
        if m.group(1).lower() in _FILE_TYPES:
            continue
        before = p[max(0, at - 65) : at][::-1]
        local = _LOCAL_BACKWARDS.match(before)
        if local is None or (local.end() == 64 and len(before) == 65 and before[64] in _LOCAL):
            continue  # no local part, or one longer than 64
        start = max(at - local.end(), taken)
        while start < at and p[start] == _DOT:
            start += 1
        if start < at:
            spans.append((start, m.end()))
            taken = m.end()
    return spans


# --- cn_id, card, phone: numbers ---------------------------------------------------------

# A number: groups of 3 or more digits with single spaces or single dashes between (an
# identity number's X at its end). The literal start makes attempts rare.
_NUMBER = re.compile(rb"0000*(?:[ -]0000*)*[Xx]?")
_INTERNATIONAL = re.compile(rb"\+0(?:[ ().-]{0,2}0){7,}")
_MOBILE = re.compile(rb"1[3-9][0-9]{9}")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)  # 2**(17-i) mod 11
_ID_OFFSET = 48 * sum(_ID_WEIGHTS)  # the weighted sum of the ASCII codes, less this: of the digits
_ID_CHECK = b"10X98765432"  # the check character, by the weighted sum mod 11
# Luhn: by ASCII code, a digit as it counts (the doubled ones: doubled, their digits summed)
_LUHN = bytes(c - 48 if 48 <= c <= 57 else 0 for c in range(256))
_LUHN_DOUBLED = bytes((2 * (c - 48)) % 9 + (c == 57) * 9 if 48 <= c <= 57 else 0 for c in range(256))
_SEPARATORS = frozenset(b" -")


def _cn_id(number: bytes) -> bool:
    """18 characters: not starting with 0, the ISO 7064 MOD 11-2 check character (``X``
    or ``x`` for 10) last, and a birth date 1900-2099 at 7-14."""
    if len(number) != 18 or number[0] == 48 or not number[:17].isdigit():
        return False
    total = sum(map(operator.mul, number, _ID_WEIGHTS)) - _ID_OFFSET  # map stops at 17
    if _ID_CHECK[total % 11] != (88 if number[17] == 120 else number[17]):  # "x" counts as "X"
        return False
    try:
        born = dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return False
    return 1900 <= born.year <= 2099


def _card(digits: bytes) -> bool:
    """13-19 digits, starting with 2-6, passing Luhn."""
    if not (13 <= len(digits) <= 19 and 50 <= digits[0] <= 54 and digits.isdigit()):
        return False
    return (sum(digits[-1::-2].translate(_LUHN)) + sum(digits[-2::-2].translate(_LUHN_DOUBLED))) % 10 == 0


def _mobile(digits: bytes) -> bool:
    return _MOBILE.fullmatch(digits) is not None


def _whole(p: bytes, i: int, j: int) -> bool:
    """No digit group goes on past ``p[i:j]`` after a space or a dash: a number in groups
    is taken whole or not at all (``4111 1111 1111 1111 12`` is one number)."""
    before = i >= 2 and p[i - 1] in _SEPARATORS and p[i - 2] in _DIGIT
    return not before and not (j + 1 < len(p) and p[j] in _SEPARATORS and p[j + 1] in _DIGIT)


def _grouped(groups: list[bytes], on: frozenset[str]) -> str | None:
    """What a number in groups is: a card (groups of 4-8 digits, the last 3-8), a mobile
    (3-4-4), or nothing."""
    lengths = [len(g) for g in groups]
    digits = b"".join(groups)
    if (
        "card" in on
        and 3 <= lengths[-1] <= 8
        and min(lengths[:-1]) >= 4
        and max(lengths) <= 8
        and _card(digits)
    ):
        return "card"
    if "phone" in on and lengths == [3, 4, 4] and _mobile(digits):
        return "phone"
    return None


# every number worth a look: a run of 11 digits, or a group of 3 or more before one of 4
_HAS_NUMBER = re.compile(rb"000(?:0{8}|[ -]0000)")


_NUMBER_TESTS = (("cn_id", _cn_id), ("card", _card), ("phone", _mobile))  # a run, alone


def _numbers(p: bytes, shape: bytes, on: frozenset[str], found: list[tuple[str, list[Span]]]) -> None:
    """Adds the identity numbers, cards and mobiles standing alone. A number in groups is
    taken whole (one kind of separator throughout) or not at all; a run of digits
    standing alone in it may still be one."""
    spans: dict[str, list[Span]] = {"cn_id": [], "card": [], "phone": []}
    tests = [(name, test) for name, test in _NUMBER_TESTS if name in on]
    for m in _NUMBER.finditer(shape):
        i, j = m.span()
        if j - i < 11:
            continue
        number = p[i:j]
        if b" " in number or b"-" in number:
            groups = number.replace(b"-", b" ").split(b" ")
            mixed = b" " in number and b"-" in number
            kind = None if mixed or not (_alone(p, i, j) and _whole(p, i, j)) else _grouped(groups, on)
            if kind is not None:
                spans[kind].append((i, j))
                continue
        else:
            groups = [number]
        k = i
        for group in groups:
            n = len(group)
            if n >= 11 and _alone(p, k, k + n):
                for name, test in tests:
                    if test(group):
                        spans[name].append((k, k + n))
                        break
            k += n + 1
    found += [(name, spans[name]) for name in ("cn_id", "card", "phone") if spans[name]]


def _internationals(p: bytes, shape: bytes) -> list[Span]:
    spans = []
    for m in _INTERNATIONAL.finditer(shape):
        i, j = m.span()
        # what comes before the "+" does not matter ("4567+1 555 0100": two numbers)
        if _alone(p, i + 1, j) and shape.count(b"0", i, j) <= 15:
            spans.append((i, j))
    return spans


# --- ip --------------------------------------------------------------------------------

# from the first dot of an IPv4 address (".0" starts it: few attempts); the first part
# is read backwards from it
_IP4_TAIL = re.compile(rb"\.0(?<=0\.0)0?0?\.00?0?\.00?0?")
# where an IPv6 address may be: at a "::", or at the first colon of 8 groups (the last
# two may be an IPv4 address)
_IP6_HIT = re.compile(rb":(?:(?=:)|(?<=[0-9A-Fa-f]:)(?:[0-9A-Fa-f]{1,4}:){5}[0-9A-Fa-f]{1,4}[:.])")
_IP6_HEAD = re.compile(rb"[0-9A-Fa-f:]*")  # matched backwards from the hit
_IP6_TAIL = re.compile(rb"[0-9A-Fa-f:.]*")
_HEX = re.compile(rb"[0-9A-Fa-f]")


def _ip6s(p: bytes) -> list[Span]:
    spans = []
    pos = 0
    while (hit := _IP6_HIT.search(p, pos)) is not None:
        at = hit.start()
        head = _IP6_HEAD.match(p[max(0, at - 40) : at][::-1])
        tail = _IP6_TAIL.match(p, at)
        start = at - (head.end() if head else 0)
        end = pos = tail.end() if tail else at + 1  # (both always match)
        while p[end - 1] == _DOT:  # a full stop after the address
            end -= 1
        if (
            end - start <= 45
            and _alone(p, start, end)
            and _HEX.search(p, start, end)
            and _address(p[start:end])
        ):
            spans.append((start, end))
    return spans


def _ip4s(p: bytes, shape: bytes) -> list[Span]:
    spans = []
    for m in _IP4_TAIL.finditer(shape):
        dot, end = m.span()
        start = dot - 1
        while start > dot - 3 and start > 0 and shape[start - 1] == 48:
            start -= 1
        if _alone(p, start, end) and _address(p[start:end]):
            spans.append((start, end))
    return spans


def _address(candidate: bytes) -> bool:
    """``ipaddress`` takes it: IPv4 parts <= 255 without leading zeros; any IPv6 form."""
    try:
        ipaddress.ip_address(candidate.decode("ascii"))
    except ValueError:
        return False
    return True


def _unknown(value: str, name: str) -> ConfigError:
    return ConfigError(
        f"MES_REDACT={value!r}: unknown detector {name!r} "
        f"(use default, off, or a comma list of {', '.join(DETECTORS)})"
    )


def parse_redact(spec: str) -> tuple[str, ...]:
    """The detectors ``MES_REDACT`` names, in the order they run: ``default`` (or an empty
    value) for all of them, ``off`` for none, or a comma list of names (any case, spaces
    ignored; ``default`` in the list means all). An unknown name raises a one-line
    :class:`ConfigError` naming ``MES_REDACT`` and the valid names."""
    value = spec.strip().lower()
    if value in ("", "default"):
        return DETECTORS
    if value == "off":
        return ()
    names = {n.strip() for n in value.split(",")} - {""}
    if not names:
        raise _unknown(spec, value)
    for name in sorted(names):
        if name not in DETECTORS and name != "default":
            raise _unknown(spec, name)
    return DETECTORS if "default" in names else tuple(n for n in DETECTORS if n in names)


def load_plugin(spec: str) -> Plugin:
    """The callable ``MES_REDACTOR`` names, ``package.module:function`` (the function may
    be an attribute path, ``module:Class.method``). Imports the module: its import-time
    code runs. A malformed value, a module that does not import, a missing attribute or
    one that is not callable raises a one-line :class:`ConfigError` naming ``MES_REDACTOR``."""
    value = spec.strip()
    module_name, colon, attribute = value.partition(":")
    if not (colon and _dotted(module_name) and _dotted(attribute)):
        raise ConfigError(f"MES_REDACTOR={spec!r} is not package.module:function")
    try:
        found: object = importlib.import_module(module_name)
    except Exception as exc:  # whatever the module raises on import: the setting names it
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ConfigError(f"MES_REDACTOR={spec!r}: cannot import {module_name} ({detail})") from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigError(f"MES_REDACTOR={spec!r}: {module_name} has no {attribute}") from None
    if not callable(found):
        raise ConfigError(f"MES_REDACTOR={spec!r}: {value} is not callable ({type(found).__name__})")
    return cast(Plugin, found)


def _dotted(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


# Message fields besides ``content`` that carry what was said.
_MORE_TEXT = ("reasoning_content", "reasoning", "refusal")


class Redactor:
    """Redacts texts with the built-in detectors ``names`` (run in :data:`DETECTORS`'
    order, whatever the order given) and then an optional plug-in. Stateless between
    calls: one instance serves every thread. An unknown name raises :class:`ConfigError`."""

    __slots__ = ("_digits", "_numbers", "_on", "_plugin", "names")

    def __init__(self, names: Iterable[str] = DETECTORS, plugin: Plugin | None = None) -> None:
        self._on = frozenset(names)
        for name in sorted(self._on - set(DETECTORS)):
            raise _unknown(",".join(sorted(self._on)), name)
        self.names: tuple[str, ...] = tuple(n for n in DETECTORS if n in self._on)
        self._plugin = plugin
        self._digits = bool(self._on - {"secret", "email"})  # a detector of digits is on
        self._numbers = bool(self._on & {"cn_id", "card", "phone"})

    @property
    def active(self) -> bool:
        """False when it changes nothing (``MES_REDACT=off`` and no plug-in)."""
        return bool(self._on) or self._plugin is not None

    def text(self, text: str, counts: dict[str, int] | None = None) -> str:
        """``text`` with every match replaced by its placeholder, each added to ``counts``
        (name -> matches) when given; ``text`` itself when nothing was found. Raises what
        the plug-in raises, and :class:`ConfigError` when it returns something else than
        a text or a text and its counts."""
        out = self._pass(text, counts) if self._on and text else text
        if out is not text:
            out = self._again(out, counts)
        return out if self._plugin is None or not text else _call_plugin(self._plugin, out, counts)

    def event(self, event: dict[str, Any]) -> dict[str, int]:
        """Redacts, in place, the texts of a validated event of MES's contract: each
        message's ``content`` (a text, or its ``text`` parts) and its tool calls'
        ``function.arguments``; the same in each ``response.choices[].message`` and
        ``delta``; an error's ``error_message``. Nothing else is touched (ids, model,
        usage, ``ip``, metadata). Returns the counts per name, ``{}`` when nothing was found."""
        counts: dict[str, int] = {}
        if not self.active:
            return counts
        for message in event.get("messages") or ():
            if isinstance(message, dict):
                self._message(message, counts)
        response = event.get("response")
        if isinstance(response, dict):
            for choice in response.get("choices") or ():
                if isinstance(choice, dict):
                    for key in ("message", "delta"):
                        message = choice.get(key)
                        if isinstance(message, dict):
                            self._message(message, counts)
        error = event.get("error_message")
        if isinstance(error, str):
            event["error_message"] = self.text(error, counts)
        return counts

    def _again(self, text: str, counts: dict[str, int] | None) -> str:
        """More passes over a text a pass changed, until one changes nothing (two in
        practice): a replacement can free its neighbour ("+" touches a letter in
        ``bob@x.com+1 555 0100``, not in ``[EMAIL]+1 555 0100``), and redacting the result
        must change nothing."""
        for _ in range(3):
            out = self._pass(text, counts)
            if out is text:
                break
            text = out
        return text

    def _pass(self, text: str, counts: dict[str, int] | None) -> str:
        on = self._on
        # the gates: conditions every match needs, cheap to test (one character: memchr)
        secret = "secret" in on and _secret_gate(text)
        email = "email" in on and "@" in text
        digits = self._digits and _has_digit(text)
        # an IPv6 address has a "::", or 8 groups (7 colons; 6 before an IPv4 address)
        ip6 = "ip" in on and ":" in text and ((c := text.count(":")) >= 6 or (c >= 2 and "::" in text))
        if not (secret or email or digits or ip6):
            return text
        # every pattern is ASCII: search the text's ASCII projection, a byte a character
        # ("?" for any other) at the text's own offsets, with no UTF-8 to encode or decode
        p = text.encode("ascii", "replace")
        found: list[tuple[str, list[Span]]] = []  # in the order of DETECTORS
        if secret:
            found.append(("secret", _secrets(p)))
        if email:
            found.append(("email", _emails(p)))
        shape = p.translate(_SHAPE) if digits else b""
        if digits and self._numbers and _HAS_NUMBER.search(shape):
            _numbers(p, shape, on, found)
        if digits and "phone" in on and "+" in text and b"+0" in shape:
            found.append(("phone", _internationals(p, shape)))
        if ip6:
            found.append(("ip", _ip6s(p)))
        if digits and "ip" in on and b"0.0" in shape:
            found.append(("ip", _ip4s(p, shape)))
        spans = _merge(found)
        if not spans:
            return text
        pieces: list[str] = []
        last = 0
        for i, j, name in spans:
            pieces += (text[last:i], PLACEHOLDERS[name])
            last = j
            if counts is not None:
                counts[name] = counts.get(name, 0) + 1
        pieces.append(text[last:])
        return "".join(pieces)

    def _message(self, message: dict[str, Any], counts: dict[str, int]) -> None:
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = self.text(content, counts)
        elif isinstance(content, list):
            for part in content:
                if (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    part["text"] = self.text(part["text"], counts)
        for key in _MORE_TEXT:  # a reasoning model's thoughts, a refusal: texts like the content
            value = message.get(key)
            if isinstance(value, str):
                message[key] = self.text(value, counts)
        calls = [*(message.get("tool_calls") or ()), message.get("function_call")]  # (the legacy form too)
        for call in calls:
            function = (call.get("function") or call) if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                function["arguments"] = self._arguments(function["arguments"], counts)

    def _arguments(self, arguments: str, counts: dict[str, int]) -> str:
        """Tool call arguments, a JSON text: redacted as text, unless that breaks the JSON
        (a bare number replaced: ``{"phone": 13812345678}``); then value by value, a number
        found becoming its placeholder as a string, and the JSON written again compactly."""
        found: dict[str, int] = {}
        out = self.text(arguments, found)
        if out != arguments and not _json_text(out) and _json_text(arguments):
            found = {}
            out = json.dumps(
                self._json(json.loads(arguments), found), ensure_ascii=False, separators=(",", ":")
            )
        for name, n in found.items():
            counts[name] = counts.get(name, 0) + n
        return out

    def _json(self, value: Any, counts: dict[str, int]) -> Any:
        if isinstance(value, str):
            return self.text(value, counts)
        if isinstance(value, int) and not isinstance(value, bool):
            out = self.text(str(value), counts)
            return value if out == str(value) else out
        if isinstance(value, list):
            return [self._json(v, counts) for v in value]
        if isinstance(value, dict):
            return {self.text(k, counts): self._json(v, counts) for k, v in value.items()}
        return value


def _call_plugin(plugin: Plugin, text: str, counts: dict[str, int] | None) -> str:
    result = plugin(text)
    found: Mapping[str, int] | None = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping):
        result, found = result
    if not isinstance(result, str):
        raise ConfigError(
            f"MES_REDACTOR: {_name(plugin)} returned a {type(result).__name__}, not a str or (str, dict)"
        )
    if found is None:
        if counts is not None and result != text:
            counts[PLUGIN_COUNT] = counts.get(PLUGIN_COUNT, 0) + 1
        return result
    for name, n in found.items():
        if not isinstance(name, str) or type(n) is not int or n < 0:
            raise ConfigError(f"MES_REDACTOR: {_name(plugin)} counted {name!r}: {n!r}, not a count")
        if n and counts is not None:
            counts[name] = counts.get(name, 0) + n
    return result


def _json_text(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _name(plugin: object) -> str:
    return f"{getattr(plugin, '__module__', '?')}:{getattr(plugin, '__qualname__', type(plugin).__name__)}"
