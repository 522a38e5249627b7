"""The capture policy (``mes.privacy.capture``): levels, what each rule field matches, first
match wins, an event lowers its level but never raises it, and every mistake in a rules
file is one line naming the file, the rule and the field. Pure unit tests."""

from __future__ import annotations

import itertools
import pathlib
import random

import pytest

from mes.errors import ConfigError
from mes.privacy.capture import Capture, CapturePolicy, Rule, load_rules, parse_rules

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "capture-rules.example.toml"
FULL, METADATA, NONE = Capture.FULL, Capture.METADATA, Capture.NONE


def event(**fields: object) -> dict[str, object]:
    """A chat event as the worker decodes it (only what the policy reads matters)."""
    base: dict[str, object] = {
        "kind": "chat",
        "user_id": 7,
        "token_id": 3,
        "channel_id": 1,
        "model_name": "gpt-4o",
    }
    return {**base, **fields}


def rules(text: str, default: Capture = FULL) -> CapturePolicy:
    return parse_rules(text, source="rules.toml", default=default)


# levels


def test_levels_are_ordered_so_that_lowering_is_min():
    assert NONE < METADATA < FULL
    assert min(FULL, METADATA) is METADATA
    assert [level.label for level in Capture] == ["none", "metadata", "full"]


@pytest.mark.parametrize(
    ("text", "level"),
    [("full", FULL), ("metadata", METADATA), ("none", NONE), (" Metadata ", METADATA), ("NONE", NONE)],
)
def test_parse_reads_each_level_in_any_case(text, level):
    assert Capture.parse(text, "MES_CAPTURE") is level


@pytest.mark.parametrize("text", ["", "meta", "partial", "2", "full,none"])
def test_parse_refuses_anything_else_in_one_line_naming_the_variable(text):
    with pytest.raises(ConfigError) as info:
        Capture.parse(text, "MES_CAPTURE")
    message = str(info.value)
    assert message.startswith(f"MES_CAPTURE={text!r} is not a capture level")
    assert "full, metadata or none" in message and "\n" not in message


# what each field matches


@pytest.mark.parametrize(
    ("rule", "matching", "other"),
    [
        ("user_id = 42", event(user_id=42), event(user_id=43)),
        ("user_id = [42, 43]", event(user_id=43), event(user_id=44)),
        ("token_id = 9", event(token_id=9), event(token_id=10)),
        ("token_id = 0", event(token_id=0), event(token_id=1)),
        ("channel_id = [1, 2]", event(channel_id=2), event(channel_id=3)),
        ('model = "gpt-4o"', event(model_name="gpt-4o"), event(model_name="gpt-4o-mini")),
        ('model = "gpt-4o*"', event(model_name="gpt-4o-mini"), event(model_name="gpt-4")),
        ('model = ["o1-*", "claude-?-*"]', event(model_name="claude-3-opus"), event(model_name="claude-35-x")),
        ('model = "gpt-[34]*"', event(model_name="gpt-3.5-turbo"), event(model_name="gpt-5")),
        ('model = "GPT-4o"', event(model_name="GPT-4o"), event(model_name="gpt-4o")),  # case-sensitive
        ('group = "vip"', event(metadata={"group": "vip"}), event(metadata={"group": "svip"})),
        ('group = ["vip", "ent-*"]', event(metadata={"group": "ent-eu"}), event(metadata={"group": "default"})),
    ],
)  # fmt: skip
def test_each_field_matches_its_value_and_nothing_else(rule, matching, other):
    policy = rules(f'[[rule]]\ncapture = "none"\n{rule}\n')
    assert policy.level(matching) is NONE
    assert policy.level(other) is FULL
    assert policy.rules[0].matches(matching) and not policy.rules[0].matches(other)


def test_absent_token_channel_and_model_read_as_the_contracts_defaults():
    """The worker gets the event as sent: a left-out token_id is token 0, model_name is ""."""
    bare = {"kind": "chat", "user_id": 7}
    assert rules('[[rule]]\ncapture = "none"\ntoken_id = 0\nchannel_id = 0\n').level(bare) is NONE
    assert rules('[[rule]]\ncapture = "none"\nmodel = ""\n').level(bare) is NONE
    assert rules('[[rule]]\ncapture = "none"\nmodel = "?*"\n').level(bare) is FULL


@pytest.mark.parametrize(
    "metadata", [None, {}, {"group": None}, {"group": 5}, {"group": ["vip"]}, "vip", {"Group": "vip"}]
)
def test_an_event_without_a_string_group_matches_no_group_rule_not_even_a_star(metadata):
    policy = rules('[[rule]]\ncapture = "none"\ngroup = "*"\n')
    assert policy.level(event(metadata=metadata)) is FULL
    assert policy.level(event()) is FULL  # no metadata at all
    assert policy.level(event(metadata={"group": ""})) is NONE  # "" is a group: "*" matches it


def test_a_rule_matches_only_when_every_field_it_names_matches():
    policy = rules('[[rule]]\ncapture = "metadata"\nchannel_id = 12\nmodel = "claude-*"\n')
    assert policy.level(event(channel_id=12, model_name="claude-3-opus")) is METADATA
    assert policy.level(event(channel_id=12, model_name="gpt-4o")) is FULL
    assert policy.level(event(channel_id=13, model_name="claude-3-opus")) is FULL


def test_the_first_matching_rule_wins_even_when_a_later_one_is_stricter_or_looser():
    text = """
    [[rule]]
    capture = "metadata"
    user_id = 1
    [[rule]]
    capture = "none"
    model = "gpt-*"
    [[rule]]
    capture = "full"
    user_id = 2
    """
    policy = rules(text, default=METADATA)
    assert policy.level(event(user_id=1, model_name="gpt-4o")) is METADATA  # rule 1, not rule 2's none
    assert policy.level(event(user_id=2, model_name="gpt-4o")) is NONE  # rule 2 before rule 3
    assert policy.level(event(user_id=2, model_name="o1")) is FULL  # rule 3 raises the default
    assert policy.level(event(user_id=3, model_name="o1")) is METADATA  # the default


def test_a_catch_all_rule_is_allowed_last():
    policy = rules('[[rule]]\ncapture = "full"\nuser_id = 1\n[[rule]]\ncapture = "none"\n')
    assert policy.level(event(user_id=1)) is FULL
    assert policy.level(event(user_id=2)) is NONE


# the default


def test_the_default_applies_when_no_rule_matches_and_without_rules():
    assert CapturePolicy().level(event()) is FULL
    assert CapturePolicy(METADATA).level(event()) is METADATA
    assert rules("", default=NONE).level(event()) is NONE
    assert rules('[[rule]]\ncapture = "none"\nuser_id = 1\n', default=METADATA).level(event()) is METADATA


def test_the_files_default_replaces_the_one_given():
    assert rules('default = "none"\n', default=FULL).default is NONE
    assert rules('default = "Metadata"\n', default=FULL).default is METADATA
    assert rules("# nothing\n", default=METADATA).default is METADATA


# the event's own field


@pytest.mark.parametrize(
    ("given", "asked", "stored"),
    [
        (FULL, "full", FULL),
        (FULL, "metadata", METADATA),
        (FULL, "none", NONE),
        (METADATA, "full", METADATA),  # never raised
        (METADATA, "none", NONE),
        (NONE, "full", NONE),
        (NONE, "metadata", NONE),
        (FULL, None, FULL),  # null: not asked
    ],
)
def test_an_event_lowers_its_level_but_never_raises_it(given, asked, stored):
    no_rules = CapturePolicy(given)
    by_rule = CapturePolicy(FULL, (Rule(given, user_id=frozenset({7})),))
    assert no_rules.level(event(capture=asked)) is stored
    assert by_rule.level(event(capture=asked)) is stored


@pytest.mark.parametrize("asked", ["metdata", "FULL", "", "redacted", 2, True, ["none"], {"level": "full"}])
def test_an_unknown_event_value_counts_as_metadata_and_still_never_raises(asked):
    assert CapturePolicy(FULL).level(event(capture=asked)) is METADATA
    assert CapturePolicy(NONE).level(event(capture=asked)) is NONE


# the fast path agrees with the plain definition


def test_the_policy_finds_the_same_first_rule_as_checking_each_rule_in_order():
    """``CapturePolicy`` matches with masks and a cache; ``Rule.matches`` is the definition."""
    rnd = random.Random(1)
    models = ["gpt-4o", "gpt-4o-mini", "claude-3-opus", "o1", ""]
    groups = [None, "vip", "default", "ent-eu"]
    pool = [
        Rule(NONE, user_id=frozenset({1, 2})),
        Rule(METADATA, token_id=frozenset({0, 5})),
        Rule(NONE, channel_id=frozenset({3})),
        Rule(METADATA, model=("gpt-4o*",)),
        Rule(NONE, model=("claude-*", "o1")),
        Rule(METADATA, group=("vip",)),
        Rule(NONE, group=("ent-*",), user_id=frozenset({3, 4})),
        Rule(METADATA, channel_id=frozenset({1}), model=("o1",), token_id=frozenset({5})),
    ]
    for _ in range(200):
        chosen = tuple(rnd.sample(pool, rnd.randint(1, len(pool))))
        default = rnd.choice(list(Capture))
        policy = CapturePolicy(default, chosen)
        for user, token, channel, model, group in itertools.product(
            [1, 3, 9], [0, 5], [1, 3], models, groups
        ):
            e = event(user_id=user, token_id=token, channel_id=channel, model_name=model)
            if group is not None:
                e["metadata"] = {"group": group}
            expected = next((r.capture for r in chosen if r.matches(e)), default)
            assert policy.level(e) is expected, (chosen, e)


def test_the_cache_of_model_names_stays_bounded():
    policy = CapturePolicy(FULL, (Rule(NONE, model=("gpt-*",)),))
    for i in range(10_000):
        assert policy.level(event(model_name=f"gpt-{i}")) is NONE
    assert policy.level(event(model_name="o1")) is FULL


# rules built in code


def test_rules_built_in_code_are_checked_too():
    with pytest.raises(ConfigError, match=r"^user_id: no ids"):
        Rule(NONE, user_id=frozenset())
    with pytest.raises(ConfigError, match=r"^token_id: -1 is not an id"):
        Rule(NONE, token_id=frozenset({-1, 2}))
    with pytest.raises(ConfigError, match=r"^model: no names"):
        Rule(NONE, model=())
    with pytest.raises(ConfigError, match=r"^group: 'vip\[' has a '\['"):
        Rule(NONE, group=("vip[",))
    with pytest.raises(ConfigError, match=r"^rule 1: names no field"):
        CapturePolicy(FULL, (Rule(NONE), Rule(FULL, user_id=frozenset({1}))))


# the rules file's mistakes

BAD_FILES = [
    ('mode = "full"\n', "unknown key 'mode'"),
    ('[[rules]]\ncapture = "none"\n', "unknown key 'rules': did you mean 'rule'?"),
    ("default = 1\n", "default: expected a level in quotes"),
    ('default = "most"\n', "default: 'most' is not a capture level (use full, metadata or none)"),
    ('[rule]\ncapture = "none"\n', "rule: write each rule as a [[rule]] table"),
    ("rule = [1]\n", "rule 1: not a table"),
    ('[[rule]]\ncapture = "none"\nuser = 1\n', "rule 1: unknown key 'user': did you mean 'user_id'?"),
    ('[[rule]]\ncapture = "none"\nmodel_name = "x"\n', "rule 1: unknown key 'model_name': did you mean 'model'?"),
    ("[[rule]]\nuser_id = 1\n", "rule 1: capture: missing (use full, metadata or none)"),
    ('[[rule]]\ncapture = "some"\nuser_id = 1\n', "rule 1: capture: 'some' is not a capture level"),
    ("[[rule]]\ncapture = 0\nuser_id = 1\n", "rule 1: capture: expected a level in quotes"),
    ('[[rule]]\ncapture = "none"\nuser_id = "42"\n', "rule 1: user_id: expected an id (a whole number) or a list of ids, got '42'"),
    ('[[rule]]\ncapture = "none"\ntoken_id = [1, "2"]\n', "rule 1: token_id: expected an id"),
    ('[[rule]]\ncapture = "none"\nchannel_id = true\n', "rule 1: channel_id: expected an id (a whole number) or a list of ids, got True"),
    ('[[rule]]\ncapture = "none"\nchannel_id = 1.5\n', "rule 1: channel_id: expected an id"),
    ('[[rule]]\ncapture = "none"\nuser_id = -3\n', "rule 1: user_id: -3 is not an id"),
    ('[[rule]]\ncapture = "none"\nuser_id = []\n', "rule 1: user_id: no ids, so the rule would match no event"),
    ('[[rule]]\ncapture = "none"\nmodel = 4\n', "rule 1: model: expected a name or glob in quotes"),
    ('[[rule]]\ncapture = "none"\nmodel = []\n', "rule 1: model: no names or patterns"),
    ('[[rule]]\ncapture = "none"\nmodel = "gpt-[4"\n', "rule 1: model: 'gpt-[4' has a '[' without its ']'"),
    ('[[rule]]\ncapture = "none"\ngroup = ["vip", "[z-a]"]\n', "rule 1: group: '[z-a]' can match nothing"),
    ('[[rule]]\ncapture = "none"\ngroup = {name = "vip"}\n', "rule 1: group: expected a name or glob in quotes"),
    ('[[rule]]\ncapture = "none"\nuser_id = 1\n[[rule]]\ncapture = "metadata"\n[[rule]]\ncapture = "full"\nuser_id = 2\n',
     "rule 2: names no field, so it matches every event"),
    ('[[rule]]\ncapture = "none"\nuser_id = 1\n[[rule]]\ncapture = "none"\nmodle = "x"\n', "rule 2: unknown key 'modle': did you mean 'model'?"),
    ('[[rule]]\ncapture = "none"\nuser_id = 1\nuser_id = 2\n', "not valid TOML: Cannot overwrite a value"),
    ('[[rule]\ncapture = "none"\n', "not valid TOML:"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), BAD_FILES)
def test_every_mistake_in_a_rules_file_is_one_line_naming_the_file_rule_and_field(tmp_path, text, expected):
    path = tmp_path / "capture.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    message = str(info.value)
    assert message.startswith(f"MES_CAPTURE_RULES={path}: "), message
    assert expected in message, message
    assert "\n" not in message


def test_a_file_that_cannot_be_read_or_is_not_utf8_is_one_line_too(tmp_path):
    with pytest.raises(
        ConfigError, match=r"^MES_CAPTURE_RULES=.*missing\.toml: cannot read the file \(No such file"
    ):
        load_rules(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"^MES_CAPTURE_RULES=.*: cannot read the file"):
        load_rules(tmp_path)  # a folder
    latin = tmp_path / "latin.toml"
    latin.write_bytes("# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"^X=.*latin\.toml: the file is not UTF-8 text$"):
        load_rules(latin, variable="X")


# the example


def test_the_example_rules_file_loads_and_does_what_its_comments_say():
    policy = load_rules(EXAMPLE, default=NONE)
    assert policy.default is FULL  # the file's default, not MES_CAPTURE's
    assert len(policy.rules) == 4
    assert policy.level(event(user_id=1002)) is METADATA  # opted out
    assert policy.level(event(user_id=1002, token_id=77)) is METADATA  # first match: rule 1
    assert policy.level(event(token_id=77)) is NONE  # the evaluation token
    assert policy.level(event(channel_id=12, model_name="claude-3-5-sonnet")) is METADATA
    assert policy.level(event(channel_id=12, model_name="gpt-4o")) is FULL
    assert policy.level(event(metadata={"group": "enterprise-eu"})) is METADATA
    assert policy.level(event(metadata={"group": "vip"})) is FULL
    assert policy.level(event(metadata={"group": "vip"}, capture="none")) is NONE  # the gateway lowers
    assert policy.level(event(user_id=1001, capture="full")) is METADATA  # ... never raises


def test_the_module_imports_only_the_standard_library_and_mes_errors():
    """``mes.privacy`` sits low in the layers: the worker and the writer both call it."""
    import ast
    import sys

    tree = ast.parse((ROOT / "mes" / "privacy" / "capture.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    outside = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names and m != "mes.errors"}
    assert outside == set()
