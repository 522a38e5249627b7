"""Redaction (``mes.privacy.redact``): each detector takes its positive examples and leaves
its near-misses alone, placeholders and counts, the order that settles overlaps, the walk
over every text of an event (and nothing else), idempotence, the settings' parsers and
the plug-in. Pure unit tests."""

from __future__ import annotations

import copy
import json
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mes.errors import ConfigError
from mes.privacy.redact import DETECTORS, PLACEHOLDERS, Redactor, load_plugin, parse_redact
from mes.schemas.check import EVENT_CHECK

SAMPLES = pathlib.Path(__file__).parent / "data" / "gateway_calls.jsonl"
REDACTOR = Redactor()


def cn_id(first17: str) -> str:
    """An identity number with its ISO 7064 MOD 11-2 check character (written here
    independently of the module)."""
    total = sum(int(c) * (2 ** (17 - i) % 11) for i, c in enumerate(first17))
    return first17 + "10X98765432"[total % 11]


def luhn_ok(number: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(number)):
        v = int(c) * (2 if i % 2 else 1)
        total += v - 9 if v > 9 else v
    return total % 10 == 0


def with_luhn(partial: str) -> str:
    """``partial`` and the check digit that makes it pass Luhn."""
    return next(partial + d for d in "0123456789" if luhn_ok(partial + d))


def redacted(text: str, names: tuple[str, ...] = DETECTORS) -> tuple[str, dict[str, int]]:
    counts: dict[str, int] = {}
    return Redactor(names).text(text, counts), counts


def test_the_helpers_agree_with_published_examples():
    assert cn_id("11010519491231002") == "11010519491231002X"
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


# --- each detector: positives (in context) and near-misses ------------------------------

POSITIVES = {
    "email": [
        "bob@example.com",
        "first.last+tag@mail.example.co.uk",
        "x_y-z%1@a-b.io",
        "13812345678@139.com",  # one address, not a phone number
        "ZHANG.San@Example.CN",
    ],
    "phone": [
        "+1 (555) 123-4567",
        "+44 20 7946 0958",
        "+86 138 1234 5678",
        "+8613812345678",
        "+49.30.1234567",
        "13812345678",
        "138 1234 5678",
        "138-1234-5678",
        "19912345678",
    ],
    "cn_id": [
        "11010519491231002X",
        "11010519491231002x",
        cn_id("44030619900307123"),
        cn_id("31011520000229456"),  # 29 February 2000
        cn_id("51010019851115001"),
    ],
    "card": [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5555555555554444",
        "2223003122003222",  # Mastercard 2-series
        "378282246310005",  # Amex, 15 digits
        "3782 822463 10005",  # Amex, 4-6-5
        "6011111111111117",
        "3530111333300000",
        "30569309025904",  # Diners, 14
        "4222222222222",  # Visa, 13
        with_luhn("622202123456789012"),  # UnionPay, 19
        "6222 0212 3456 7890 " + with_luhn("622202123456789012")[-3:],  # 4-4-4-4-3
    ],
    "ip": [
        "192.168.1.1",
        "10.0.0.1",
        "8.8.8.8",
        "255.255.255.255",
        "2001:db8::1",
        "::1",
        "fe80::1ff:fe23:4567:890a",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "::ffff:192.0.2.1",  # one address, not an IPv6 prefix and an IPv4
    ],
    "secret": [
        "sk-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb3dEf6hIj9kLm2n",  # New API / OpenAI, 48
        "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z_Ab3dEf6hIj9kLm2n-Op5qRs8tUv1wXy4z",
        "sk-ant-api03-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z-AbCdEfAA",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJib2IifQ.",  # unsigned
        "AKIAIOSFODNN7EXAMPLE",
        "ASIAY34FZKBOKMUTVV7A",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\n"
        "aFDrBz9vFqU4yuq8/4c8m7P2Dmz1/ZzQ3Xk=\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
        "-----END OPENSSH PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----",  # in JSON
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----",
    ],
}

NEAR_MISSES = {
    "email": [
        "user@localhost",
        "user@server",
        "a@b.c",
        "@handle",
        "icon@2x.png",
        "foo@bar.123",
        "mail me @ home",
    ],
    "phone": [
        "12812345678",  # no mobile starts 12
        "1381234567",  # 10 digits
        "138123456789",  # 12 digits: inside a longer run
        "013812345678",
        "8613812345678",  # a longer run without the +
        "ID13812345678",  # inside a word
        "13812345678.5",  # a decimal
        "138 1234 56789",  # not 3-4-4
        "+1234567",  # 7 digits
        "+1234567890123456",  # 16 digits
        "+13812345678x",  # inside a word
    ],
    "cn_id": [
        "11010519491231002Y",
        "110105194912310021",  # wrong check character
        cn_id("11010519490231002"),  # 31 February
        cn_id("11010518991231002"),  # born 1899
        cn_id("01010519491231002"),  # no region starts with 0
        "11010519491231002X1",  # a longer run
        "A11010519491231002X",  # inside a word
    ],
    "card": [
        "4111111111111112",  # 16 digits failing Luhn
        "378282246310006",  # 15 digits failing Luhn
        "5555 5555 5555 4445",
        with_luhn("176849279900"),  # passes Luhn, but a card does not start with 1 (a ms timestamp)
        with_luhn("900000000000000"),  # nor 9
        "41111111111111110",  # a longer run
        "4111 1111 1111 1111 12",  # one number of 18 digits
        "4111 1111-1111 1111",  # mixed separators
        "0.4111111111111111",  # a decimal
        "x4111111111111111",
        "4111 1111 1111 1112",  # groups, failing Luhn
        "2024-2025 2026-2027",
    ],
    "ip": [
        "999.1.1.1",
        "256.1.1.1",
        "1.2.3.4.5",  # a dotted version
        "v1.2.3.4",
        "1.2.3",
        "01.02.03.04",
        "1234.1.1.1",
        "12:30:45",
        "std::vector",
        "Foo::Bar",
        "00:1A:2B:3C:4D:5E",  # a MAC address
        "a :: b",
        "1:2:3:4:5:6:7",
    ],
    "secret": [
        "sk-abc123",  # too short
        "task-force-with-a-very-long-name-1",
        "sk-thisisjustalongwordwithoutdigits",
        "AKIA1234",
        "XAKIAIOSFODNN7EXAMPLE",  # inside a word
        "AKIAIOSFODNN7EXAMPLEX",
        "eyJhbGciOiJIUzI1NiJ9",  # one part
        "XeyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl",  # inside a token
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkq\n-----END CERTIFICATE-----",
    ],
}


@pytest.mark.parametrize(
    ("name", "value"), [(n, v) for n, values in POSITIVES.items() for v in values], ids=repr
)
@pytest.mark.parametrize("context", ["is {} here", "{}", "联系方式：{}，谢谢", "({}).", "😀 {}\n"])  # noqa: RUF001 - Chinese punctuation, on purpose
def test_each_detector_replaces_its_positive_examples_with_its_placeholder(name, value, context):
    out, counts = redacted(context.format(value))
    assert out == context.format(PLACEHOLDERS[name])
    assert counts == {name: 1}


@pytest.mark.parametrize("name", DETECTORS)
def test_each_detector_alone_takes_its_own_examples(name):
    for value in POSITIVES[name]:
        assert redacted(f"x {value} y", (name,)) == (f"x {PLACEHOLDERS[name]} y", {name: 1})


@pytest.mark.parametrize(
    ("name", "value"), [(n, v) for n, values in NEAR_MISSES.items() for v in values], ids=repr
)
def test_near_misses_are_left_alone(name, value):
    text = f"see {value} now"
    counts: dict[str, int] = {}
    assert REDACTOR.text(text, counts) is text
    assert counts == {}


def test_a_pem_block_cut_short_is_redacted_to_its_last_base64_line():
    text = "key:\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\nthat is all"
    assert REDACTOR.text(text) == "key:\n[SECRET]\nthat is all"


def test_the_detectors_that_are_off_find_nothing():
    text = "bob@example.com 13812345678 4111111111111111 10.0.0.1"
    assert redacted(text, ("phone", "ip")) == (
        "bob@example.com [PHONE] 4111111111111111 [IP]",
        {"phone": 1, "ip": 1},
    )
    assert Redactor(()).text(text) is text


# --- several at once, order, offsets ------------------------------------------------------


def test_every_match_is_counted_by_type_and_the_text_around_it_is_kept():
    text = (
        "用户😀 bob@example.com 和 alice@example.org 的电话13812345678，卡号 4111 1111 1111 1111，"  # noqa: RUF001 - Chinese punctuation, on purpose
        "身份证11010519491231002X，IP 10.0.0.1 / 2001:db8::7，key AKIAIOSFODNN7EXAMPLE。"  # noqa: RUF001 - Chinese punctuation, on purpose
    )
    out, counts = redacted(text)
    assert out == (
        "用户😀 [EMAIL] 和 [EMAIL] 的电话[PHONE]，卡号 [CARD]，身份证[CN_ID]，IP [IP] / [IP]，key [SECRET]。"  # noqa: RUF001 - Chinese punctuation, on purpose
    )
    assert counts == {"email": 2, "phone": 1, "card": 1, "cn_id": 1, "ip": 2, "secret": 1}


def test_text_without_a_match_is_returned_as_it_is():
    text = "Nothing here: version 2.1.3, 10:30, $3,480, 2024-2025, e-mail, Q3."
    assert REDACTOR.text(text) is text


def test_the_order_settles_overlaps():
    # an identity number that also passes Luhn and starts like a card is an identity number
    both = next(n for k in range(100) if (n := cn_id(f"440306199003071{k:02d}"))[-1] != "X" and luhn_ok(n))
    assert redacted(both) == ("[CN_ID]", {"cn_id": 1})
    assert redacted(both, ("card", "phone")) == ("[CARD]", {"card": 1})
    # a secret goes whole, digits and all; an address whose local part is a number is an address
    pem = POSITIVES["secret"][7]
    assert redacted(f"{pem} 13812345678") == ("[SECRET] [PHONE]", {"secret": 1, "phone": 1})
    assert redacted("13812345678@139.com", ("phone",)) == ("[PHONE]@139.com", {"phone": 1})


def test_a_match_freed_by_a_neighbours_replacement_is_found_in_the_same_call():
    """ "+" after a TLD touches a letter; after [EMAIL] it does not: redacting twice must
    give what redacting once gave."""
    assert redacted("bob@example.com+1 (555) 123-4567") == ("[EMAIL][PHONE]", {"email": 1, "phone": 1})
    assert redacted("10.0.0.1 4111 1111 1111 1111") == ("[IP] [CARD]", {"ip": 1, "card": 1})


def test_lone_surrogates_and_wide_characters_keep_their_place():
    text = "\ud800 13812345678 \U0001f600 bob@example.com"
    assert REDACTOR.text(text) == "\ud800 [PHONE] \U0001f600 [EMAIL]"


@pytest.mark.parametrize(
    "text",
    ["eyJ" * 40_000, "sk-" * 40_000, "-----BEGIN PRIVATE KEY-----\n" * 4_000, "a" * 100_000 + "@", "@a" * 50_000,
     "1" * 100_000, "1." * 50_000, ":" * 100_000, "+1" * 50_000, "0000 " * 20_000, "1-" * 50_000],
    ids=lambda t: repr(t[:6]),
)  # fmt: skip
def test_pathological_texts_take_linear_time(text):
    """No pattern backtracks over a long run (a regression would hang, not fail)."""
    REDACTOR.text(text)


# --- idempotence --------------------------------------------------------------------------

FRAGMENTS = [v for values in (*POSITIVES.values(), *NEAR_MISSES.values()) for v in values] + [
    " ", "\n", ".", ":", "-", "@", "+", "1", "22", "333", "你好", "😀", "x", "[EMAIL]", "[PHONE]",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=8), max_size=12).map("".join))
def test_redacting_a_redacted_text_changes_nothing(text):
    once = REDACTOR.text(text)
    assert REDACTOR.text(once) == once


@pytest.mark.parametrize("value", [v for values in POSITIVES.values() for v in values], ids=repr)
def test_a_redacted_example_is_left_as_it_is(value):
    once = REDACTOR.text(value)
    counts: dict[str, int] = {}
    assert REDACTOR.text(once, counts) == once and counts == {}


# --- the event walk ------------------------------------------------------------------------

KEY = POSITIVES["secret"][0]


def chat_event() -> dict[str, Any]:
    """Every place a text sits, and fields that look like personal data but are not text."""
    return {
        "schema_version": 1,
        "kind": "chat",
        "event_id": "0192f3c4-8b1e-7c3a-9d2e-5f6a7b8c9d0e",
        "occurred_at": 1768492799000,
        "conversation_id": "conv-bob@example.com",
        "model_name": "gpt-4o",
        "user_id": 7,
        "token_id": 3,
        "channel_id": 1,
        "ip": "203.0.113.9",
        "request_id": "req-13812345678",
        "is_stream": True,
        "metadata": {"email": "bob@example.com"},
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Mail bob@example.com or call 13812345678"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "my card 4111 1111 1111 1111"},
                    {"type": "image_url", "image_url": {"url": "https://x.test/bob@example.com.png"}},
                    {"type": "input_audio", "text": "13812345678"},  # not a text part
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "name": "bob@example.com",
                "tool_calls": [
                    {
                        "id": "call_13812345678",
                        "type": "function",
                        "function": {"name": "send_mail", "arguments": '{"to": "bob@example.com"}'},
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "call_13812345678",
                "content": '{"sent": true, "ip": "10.0.0.1"}',
            },
        ],
        "response": {
            "id": "chatcmpl-13812345678",
            "object": "chat.completion",
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "Done for 11010519491231002X",
                        "tool_calls": [
                            {
                                "id": "c2",
                                "type": "function",
                                "function": {"name": "dial", "arguments": '{"phone": 13812345678}'},
                            }
                        ],
                    },
                    "finish_reason": "stop",
                },
                {
                    "index": 1,
                    "delta": {"role": "assistant", "content": f"use {KEY}"},
                    "finish_reason": "stop",
                },
            ],
            "usage": {"prompt_tokens": 13, "completion_tokens": 8, "total_tokens": 21},
        },
    }


def test_the_event_walk_redacts_every_text_and_nothing_else():
    event = chat_event()
    EVENT_CHECK.validate_python(event)
    expected = copy.deepcopy(event)
    messages, choices = expected["messages"], expected["response"]["choices"]
    messages[1]["content"] = "Mail [EMAIL] or call [PHONE]"
    messages[2]["content"][0]["text"] = "my card [CARD]"
    messages[3]["tool_calls"][0]["function"]["arguments"] = '{"to": "[EMAIL]"}'  # formatting kept
    messages[4]["content"] = '{"sent": true, "ip": "[IP]"}'
    choices[0]["message"]["content"] = "Done for [CN_ID]"
    choices[0]["message"]["tool_calls"][0]["function"]["arguments"] = '{"phone":"[PHONE]"}'  # still JSON
    choices[1]["delta"]["content"] = "use [SECRET]"

    counts = REDACTOR.event(event)

    assert event == expected
    assert counts == {"email": 2, "phone": 2, "card": 1, "ip": 1, "cn_id": 1, "secret": 1}
    EVENT_CHECK.validate_python(event)


def test_an_error_events_message_is_redacted():
    event = {
        "schema_version": 1,
        "kind": "error",
        "event_id": "0192f3c4-8b1e-7c3a-9d2e-5f6a7b8c9d0f",
        "occurred_at": 1768492799000,
        "conversation_id": "conv-1",
        "user_id": 7,
        "messages": [{"role": "user", "content": "hi from 10.1.2.3"}],
        "error_code": 401,
        "error_message": f"invalid key {KEY} for bob@example.com",
    }
    EVENT_CHECK.validate_python(event)
    assert REDACTOR.event(event) == {"ip": 1, "secret": 1, "email": 1}
    assert event["error_message"] == "invalid key [SECRET] for [EMAIL]"
    assert event["messages"][0]["content"] == "hi from [IP]"


def test_an_event_without_a_match_or_with_redaction_off_is_left_as_it_is():
    plain = chat_event()
    plain["messages"] = [{"role": "user", "content": "hello"}]
    plain["response"]["choices"] = [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]
    before = copy.deepcopy(plain)
    assert REDACTOR.event(plain) == {} and plain == before
    event, before = chat_event(), chat_event()
    off = Redactor(parse_redact("off"))
    assert not off.active
    assert off.event(event) == {} and event == before


def test_tool_arguments_that_are_not_json_are_redacted_as_text():
    event = chat_event()
    call = event["messages"][3]["tool_calls"][0]["function"]
    call["arguments"] = '{"to": "bob@example.com", "n": 13812345678'  # streamed, cut short
    REDACTOR.event(event)
    assert call["arguments"] == '{"to": "[EMAIL]", "n": [PHONE]'


def test_the_gateway_samples_hold_nothing_to_redact():
    """Realistic chat text (Chinese, emoji, tool calls, versions, times, HTML) is left alone."""
    for line in SAMPLES.read_text(encoding="utf-8").splitlines():
        call = json.loads(line)
        kind = "chat" if call["call"] == "save_chat_completion" else "error"
        event = {"schema_version": 1, "kind": kind, "event_id": "sample-0001", "occurred_at": 1768492799000}
        event.update(call["args"])
        before = copy.deepcopy(event)
        assert REDACTOR.event(event) == {}, call["name"]
        assert event == before


# --- MES_REDACT ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("default", DETECTORS),
        ("", DETECTORS),
        ("  Default ", DETECTORS),
        ("off", ()),
        ("OFF", ()),
        ("email", ("email",)),
        (" phone , EMAIL,phone ", ("email", "phone")),  # the order they run, once each
        ("ip,secret,cn_id,card", ("secret", "cn_id", "card", "ip")),
        ("email,default", DETECTORS),
    ],
)
def test_parse_redact(spec, names):
    assert parse_redact(spec) == names


@pytest.mark.parametrize("spec", ["emial", "email,passport", ",", "off,email", "on", "email;phone"])
def test_an_unknown_detector_is_one_line_naming_the_variable_and_the_valid_names(spec):
    with pytest.raises(ConfigError) as caught:
        parse_redact(spec)
    message = str(caught.value)
    assert message.startswith("MES_REDACT=") and "\n" not in message
    assert all(name in message for name in DETECTORS)


def test_a_redactor_refuses_an_unknown_name():
    with pytest.raises(ConfigError, match="MES_REDACT"):
        Redactor(["email", "ssn"])


# --- MES_REDACTOR: the plug-in -------------------------------------------------------------

PLUGIN = """
import re

NAME = re.compile(r"\\b(Alice|Bob)\\b")

def redact(text):
    out, n = NAME.subn("[PERSON]", text)
    return out, {"person": n}

def plain(text):
    return text.replace("Paris", "[CITY]")

def broken(text):
    return 42

def bad_counts(text):
    return text, {"person": -1}

def fails(text):
    raise RuntimeError("presidio is down")

class Engine:
    @staticmethod
    def redact(text):
        return text.upper()

NOT_CALLABLE = 3
"""


@pytest.fixture
def plugin_module(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "mes_test_plugin.py").write_text(PLUGIN)
    (tmp_path / "mes_test_plugin_broken.py").write_text("raise ImportError('needs presidio\\nand spacy')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mes_test_plugin"
    sys.modules.pop("mes_test_plugin", None)
    sys.modules.pop("mes_test_plugin_broken", None)


def test_a_plugin_runs_after_the_builtins_and_adds_its_counts(plugin_module):
    redactor = Redactor(DETECTORS, load_plugin(f"{plugin_module}:redact"))
    counts: dict[str, int] = {}
    assert (
        redactor.text("Bob wrote to bob@example.com and Alice", counts)
        == "[PERSON] wrote to [EMAIL] and [PERSON]"
    )
    assert counts == {"email": 1, "person": 2}
    event = {
        "messages": [{"role": "user", "content": "Alice at 10.0.0.1"}, {"role": "user", "content": "hi"}]
    }
    assert redactor.event(event) == {"ip": 1, "person": 1}  # a count of 0 is not kept
    assert event["messages"][0]["content"] == "[PERSON] at [IP]"


def test_a_plugin_that_returns_a_text_only_is_counted_per_text_it_changed(plugin_module):
    redactor = Redactor((), load_plugin(f"{plugin_module}:plain"))
    assert redactor.active
    event = {"messages": [{"role": "user", "content": "Paris, Paris"}, {"role": "user", "content": "Rome"}]}
    assert redactor.event(event) == {"plugin": 1}
    assert event["messages"][0]["content"] == "[CITY], [CITY]"
    assert load_plugin(f" {plugin_module}:Engine.redact ")("abc") == "ABC"


@pytest.mark.parametrize("function", ["broken", "bad_counts"])
def test_a_plugin_that_answers_something_else_is_a_config_error(plugin_module, function):
    redactor = Redactor((), load_plugin(f"{plugin_module}:{function}"))
    with pytest.raises(ConfigError, match=f"MES_REDACTOR: {plugin_module}:{function}"):
        redactor.text("hello")


def test_what_a_plugin_raises_is_raised(plugin_module):
    with pytest.raises(RuntimeError, match="presidio is down"):
        Redactor((), load_plugin(f"{plugin_module}:fails")).text("hello")


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("mes_test_plugin", "is not package.module:function"),
        ("mes_test_plugin:", "is not package.module:function"),
        (":redact", "is not package.module:function"),
        ("mes-test:redact", "is not package.module:function"),
        ("mes_test_plugin_missing:redact", "cannot import mes_test_plugin_missing (ModuleNotFoundError"),
        (
            "mes_test_plugin_broken:redact",
            "cannot import mes_test_plugin_broken (ImportError: needs presidio and spacy)",
        ),
        ("mes_test_plugin:nothing", "mes_test_plugin has no nothing"),
        ("mes_test_plugin:NOT_CALLABLE", "mes_test_plugin:NOT_CALLABLE is not callable (int)"),
    ],
)
def test_a_bad_plugin_setting_is_one_line_naming_the_variable(plugin_module, spec, says):
    with pytest.raises(ConfigError) as caught:
        load_plugin(spec)
    message = str(caught.value)
    assert message.startswith(f"MES_REDACTOR={spec!r}") and says in message and "\n" not in message


def test_reasoning_refusal_and_legacy_function_calls_are_redacted():
    """A reasoning model's thoughts, a refusal and the legacy function_call carry what was said too."""
    from mes.privacy.redact import Redactor

    message = {"role": "assistant", "content": None, "reasoning_content": "mail bob@example.com",
               "refusal": "not to bob@example.com", "function_call": {"name": "f", "arguments": '{"to": "bob@example.com"}'}}  # fmt: skip
    counts = Redactor(["email"]).event({"messages": [message]})
    assert counts == {"email": 3}
    assert "bob@example.com" not in str(message)
    assert message["function_call"]["name"] == "f"
