"""The operator decides what is kept: capture levels and redaction, applied by the writer
before anything is written, on every backend (the privacy issue).

Each test writes through ``BatchWriter`` with the ``Privacy`` that ``mes worker`` builds
from the environment, then scans every text column of every table for what must not be
there, and checks that the index and rollups still equal a recount.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import text

from mes.config.settings import PrivacySettings
from mes.errors import ConfigError
from mes.reader import HistoryReader
from mes.schemas import decode_event
from mes.storage import Storage

from .factories import BASE_MS, assert_consistent, chat, error

SECRET = "the launch code is 0000 丁香"
EMAIL = "alice.smith@example.com"


def privacy(storage: Storage, **env: str) -> None:
    storage.writer.privacy = PrivacySettings.from_env(env).build()


def cells(storage: Storage) -> list[str]:
    """Every text and binary value of every MES table, as text."""
    q = storage.engine.dialect.identifier_preparer.quote
    out: list[str] = []
    with storage.engine.connect() as conn:
        for name in sorted(storage.catalog.refresh()):
            for row in conn.execute(text(f"SELECT * FROM {q(name)}")):
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        out.append(bytes(value).decode("utf-8", "replace"))
                    elif isinstance(value, str):
                        out.append(value)
    return out


def found(storage: Storage, needle: str) -> list[str]:
    return [c[:120] for c in cells(storage) if needle in c]


def decoded(event: dict[str, Any]) -> dict[str, Any]:
    return decode_event(orjson.dumps(event))


def two_turns(cid: str, *, user_id: int = 1, **extra: Any) -> list[dict[str, Any]]:
    first = [{"role": "user", "content": f"{SECRET} (write to {EMAIL})"}]
    second = [
        *first,
        {"role": "assistant", "content": f"noted, {SECRET}"},
        {"role": "user", "content": "and?"},
    ]
    return [
        decoded(chat(cid, first, f"noted, {SECRET}", user_id=user_id, **extra)),
        decoded(chat(cid, second, f"done {SECRET}", user_id=user_id, ms=BASE_MS + 60_000, **extra)),
    ]


def test_metadata_keeps_every_row_but_no_content_anywhere(backend):
    """MES_CAPTURE=metadata: the rows, roles, tokens, times and ids are there; no table
    holds a byte of what was said (not the title either), reads say the content was not
    stored, and the rollups equal a recount."""
    storage = backend.storage()
    privacy(storage, MES_CAPTURE="metadata")
    events = [*two_turns("conv-meta"), decoded(error("conv-meta", [{"role": "user", "content": SECRET}]))]
    result = storage.writer.write(events)
    assert result.applied == 3 and result.rows == 4 and result.error_rows == 1
    assert found(storage, "launch code") == [] and found(storage, "丁香") == []
    reader = HistoryReader(storage)
    conv = reader.get_conversation("conv-meta", user_id=1)
    assert conv is not None and conv["title"] == "" and conv["message_count"] == 4
    messages = reader.get_conversation_messages("conv-meta", user_id=1)
    assert messages is not None
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert all(m["content"] is None and m["content_stored"] is False for m in messages)
    assert messages[1]["usage"]["total_tokens"] == 30
    assert_consistent(storage)


def test_full_capture_stores_the_words(backend):
    """The default (the seed's behaviour): everything as sent."""
    storage = backend.storage()
    privacy(storage)
    storage.writer.write(two_turns("conv-full"))
    assert found(storage, "launch code") and found(storage, EMAIL)
    assert_consistent(storage)


def test_rules_pick_the_level_and_an_event_may_lower_it_but_never_raise_it(backend, tmp_path):
    """A rules file by user: user 42 is kept as metadata, others in full; an event of user 7
    asking for metadata gets it; an event of user 42 asking for full stays metadata."""
    rules = tmp_path / "capture.toml"
    rules.write_text('[[rule]]\ncapture = "metadata"\nuser_id = [42]\n')
    storage = backend.storage()
    privacy(storage, MES_CAPTURE_RULES=str(rules))
    asks_full = [decoded(chat("c42", [{"role": "user", "content": "forty-two " + SECRET}], "x", user_id=42,
                              capture="full"))]  # fmt: skip
    asks_less = [decoded(chat("c7", [{"role": "user", "content": "seven " + SECRET}], "y", user_id=7,
                              capture="metadata"))]  # fmt: skip
    plain = [decoded(chat("c8", [{"role": "user", "content": "eight " + SECRET}], "z", user_id=8))]
    storage.writer.write([*asks_full, *asks_less, *plain])
    assert found(storage, "forty-two") == [] and found(storage, "seven") == []
    assert found(storage, "eight " + SECRET)
    assert_consistent(storage)


def test_an_unknown_capture_level_is_refused_by_the_contract():
    """The per-event field is part of the contract: a misspelt level is an invalid event
    (a dead letter with that reason), not a silent full capture."""
    from mes.errors import InvalidEvent

    event = chat("c", [{"role": "user", "content": "hi"}], "yo", capture="metdata")
    with pytest.raises(InvalidEvent, match="capture"):
        decode_event(orjson.dumps(event))


def test_redaction_replaces_what_it_finds_and_counts_it_on_the_answer(backend):
    """MES_REDACT=default: the e-mail address is a placeholder in every row that held it;
    the answer row says how many of each type were found; the re-sent, redacted first
    turn is recognised and stored once."""
    storage = backend.storage()
    privacy(storage, MES_REDACT="default")
    first, second = two_turns("conv-redact")
    storage.writer.write([first])
    result = storage.writer.write([second])
    assert result.rows == 2  # the new question and its answer: the re-sent turns matched
    assert found(storage, EMAIL) == []
    assert found(storage, "[EMAIL]")
    messages = HistoryReader(storage).get_conversation_messages("conv-redact", user_id=1)
    assert messages is not None and len(messages) == 4
    assert messages[0]["content"] == f"{SECRET} (write to [EMAIL])"
    assert messages[1]["redacted"] == {"email": 1}
    assert_consistent(storage)


def test_redaction_covers_error_messages(backend):
    storage = backend.storage()
    privacy(storage, MES_REDACT="email")
    storage.writer.write([decoded(error("conv-err", [{"role": "user", "content": "hi"}],
                                        message=f"upstream rejected {EMAIL}"))])  # fmt: skip
    assert found(storage, EMAIL) == [] and found(storage, "upstream rejected [EMAIL]")


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"MES_CAPTURE": "most"}, "MES_CAPTURE"),
        ({"MES_REDACT": "email,face"}, "MES_REDACT"),
        ({"MES_REDACTOR": "nope"}, "MES_REDACTOR"),
        ({"MES_CAPTURE_RULES": "/nonexistent/capture.toml"}, "MES_CAPTURE_RULES"),
    ],
)
def test_a_bad_privacy_setting_is_one_line_naming_it(env, says):
    with pytest.raises(ConfigError) as caught:
        PrivacySettings.from_env(env)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_privacy_line_says_what_is_in_force():
    assert PrivacySettings.from_env({}).describe() == "capture full, redaction off"
    line = PrivacySettings.from_env({"MES_CAPTURE": "metadata", "MES_REDACT": "email,phone"}).describe()
    assert line == "capture metadata, redaction email,phone"


def test_the_readme_rules_file_does_what_the_readme_says(tmp_path):
    """README's Privacy example, as written: users 1001 and 1002, channel 12 with a Claude
    model and the enterprise groups are kept as metadata; the rest in full."""
    from mes.privacy.capture import Capture

    from .readme import example

    rules = tmp_path / "capture.toml"
    rules.write_text(example("capture-rules"))
    policy = PrivacySettings.from_env({"MES_CAPTURE_RULES": str(rules)}).policy

    def level(**fields: Any) -> Capture:
        return policy.level({"user_id": 1, "token_id": 1, "channel_id": 1, "model_name": "gpt-4o", **fields})

    assert level() == Capture.FULL
    assert level(user_id=1002) == Capture.METADATA
    assert level(channel_id=12, model_name="claude-sonnet-4") == Capture.METADATA
    assert level(channel_id=12) == Capture.FULL
    assert level(metadata={"group": "enterprise-eu"}) == Capture.METADATA
    assert level(user_id=1001, capture="none") == Capture.NONE


def test_the_readme_redactor_plugin_runs_after_the_detectors(backend, tmp_path, monkeypatch):
    """README's plug-in example, as written, loaded by MES_REDACTOR: its placeholder and its
    count are stored with the built-in detectors'."""
    from .readme import example

    package = tmp_path / "plugins" / "mycompany"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "mes_redact.py").write_text(example("redactor-plugin"))
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    storage = backend.storage()
    privacy(storage, MES_REDACT="email", MES_REDACTOR="mycompany.mes_redact:redact")
    said = f"EMP-123456 wrote from {EMAIL}"
    storage.writer.write([decoded(chat("conv-plugin", [{"role": "user", "content": said}], "ok"))])
    messages = HistoryReader(storage).get_conversation_messages("conv-plugin", user_id=1)
    assert messages is not None
    assert messages[0]["content"] == "[EMPLOYEE] wrote from [EMAIL]"
    assert messages[1]["redacted"] == {"email": 1, "employee": 1}
    assert found(storage, "EMP-123456") == [] and found(storage, EMAIL) == []


def index_and_rollups(storage: Storage) -> Any:
    """``mes_daily_stats`` and ``mes_conversations``' counters, as ``mes verify`` reads them."""
    from mes.storage.verify import read_index

    index = read_index(storage.catalog)
    return index.stats, index.conversations


def test_content_retention_erases_old_words_and_keeps_every_count(backend, redis_server):
    """MES_CONTENT_RETENTION_DAYS=30, run by the workers' maintenance: the days older than
    30 keep every row, token and count but no content (reads say it expired, the title is
    gone); the recent day is untouched; a second pass changes nothing; a dropped day's
    record goes with it."""
    import datetime as dt

    from mes.config.settings import Settings
    from mes.storage.expiry import expire_content
    from mes.worker.context import WorkerContext
    from mes.worker.runner import MESWorker

    settings = Settings.from_env(backend.env(MES_DAILY_PARTITION="true", MES_CONTENT_RETENTION_DAYS="30",
                                             REDIS_CONN_STRING=redis_server.url))  # fmt: skip
    storage = Storage.open(settings.database)
    now = storage.calendar.now_ms()
    old = [*two_turns("conv-old"), decoded(error("conv-old", [{"role": "user", "content": "old " + SECRET}]))]
    recent = [decoded(chat("conv-new", [{"role": "user", "content": "fresh words"}], "fresh answer", ms=now))]
    storage.writer.write([*old, *recent])
    before = index_and_rollups(storage)
    reader = HistoryReader(storage)
    ctx = WorkerContext.build(settings, redis_server.client(), storage=storage)
    MESWorker.for_context(ctx).mes_maintenance()
    assert found(storage, "launch code") == [] and found(storage, EMAIL) == []
    assert found(storage, "fresh words") and found(storage, "fresh answer")
    assert index_and_rollups(storage) == before  # every count and token as it was
    assert reader.get_conversation("conv-old", user_id=1)["title"] == ""
    messages = reader.get_conversation_messages("conv-old", user_id=1)
    assert [m["content"] for m in messages] == [None] * 4
    assert all(m["content_expired"] is True for m in messages)
    assert messages[1]["usage"]["total_tokens"] == 30
    errors = reader.get_conversation_errors("conv-old", user_id=1)
    assert errors[0]["error_message"] == "rate limited" and errors[0]["messages"][0]["content"] is None
    assert_consistent(storage)
    assert expire_content(storage, 30).rows == {}  # done: nothing new to read
    late = decoded(chat("conv-late", [{"role": "user", "content": "late " + SECRET}], "late answer"))
    storage.writer.write([late])  # an event of the old day, arriving after the pass
    assert found(storage, "late answer")
    assert sum(expire_content(storage, 30).rows.values()) == 2  # the next pass erases it, and only it
    assert found(storage, "late answer") == [] and found(storage, "launch code") == []
    from mes.storage.partitions import drop_day

    drop_day(storage, dt.date(2026, 1, 15))
    with storage.engine.connect() as conn:
        marks = conn.execute(text("SELECT table_name FROM mes_content_expired")).all()
    assert marks == [("mes_conversations",)]  # the dropped day's tables are gone; titles: up to the cutoff
    storage.close()


def test_content_retention_needs_daily_tables(backend):
    from mes.config.settings import Settings

    with pytest.raises(ConfigError, match="MES_DAILY_PARTITION=true"):
        Settings.from_env(backend.env(MES_DAILY_PARTITION="false", MES_CONTENT_RETENTION_DAYS="30"))


def test_a_gateway_lowers_one_request_through_the_producer(backend, redis_server):
    """``save_chat_completion(..., capture="metadata")`` from the gateway, through Redis and
    a worker: that request's words are not stored; the next one's are."""
    from mes.producer import Producer

    from .test_pipeline import mes_settings, run_workers

    settings = mes_settings(backend, redis_server)
    storage = Storage.open(settings.database)
    producer = Producer(settings.producer)
    private = [{"role": "user", "content": "private " + SECRET}]
    producer.save_chat_completion("conv-gw", private, {"choices": [{"message": {"role": "assistant", "content": "ok"}}]}, "gpt-4o",
                                  1, 1, 1, occurred_at=BASE_MS, capture="metadata")  # fmt: skip
    public = [*private, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "public words"}]
    producer.save_chat_completion("conv-gw", public, {"choices": [{"message": {"role": "assistant", "content": "fine"}}]}, "gpt-4o",
                                  1, 1, 1, occurred_at=BASE_MS + 1000)  # fmt: skip
    assert producer.flush(10)
    run_workers(settings, redis_server, storage)
    assert found(storage, "private") == [] and found(storage, "public words")
    assert_consistent(storage)
    producer.close()
    storage.close()


def test_an_event_asks_for_less_when_the_operator_keeps_everything(backend):
    """No MES_CAPTURE, no rules, no redaction (the writer then skips the policy): an event
    saying "capture": "metadata" is still stored without its words."""
    storage = backend.storage()
    privacy(storage)
    assert storage.writer.privacy is None
    storage.writer.write([decoded(chat("conv-ask", [{"role": "user", "content": "asked " + SECRET}], "k",
                                       capture="metadata"))])  # fmt: skip
    assert found(storage, "asked") == [] and found(storage, "launch code") == []
    assert HistoryReader(storage).get_conversation("conv-ask", user_id=1)["message_count"] == 2
    assert_consistent(storage)


def test_a_failing_redactor_keeps_no_words_of_its_event_and_holds_back_no_other(
    backend, tmp_path, monkeypatch
):
    """A plug-in that raises on one event: that event is stored without its content (and the
    failure logged), the others of the batch as usual."""
    module = tmp_path / "plugins" / "flaky_redact.py"
    module.parent.mkdir()
    module.write_text(
        "def redact(text):\n    if 'boom' in text:\n        raise ValueError('no')\n    return text\n"
    )
    monkeypatch.syspath_prepend(str(module.parent))
    storage = backend.storage()
    privacy(storage, MES_REDACTOR="flaky_redact:redact")
    bad = decoded(chat("conv-flaky", [{"role": "user", "content": "boom " + SECRET}], "x"))
    good = decoded(chat("conv-fine", [{"role": "user", "content": "fine words"}], "y"))
    assert storage.writer.write([bad, good]).applied == 2
    assert found(storage, "boom") == [] and found(storage, "fine words")
    assert_consistent(storage)


def test_a_dead_letter_of_a_metadata_event_keeps_no_words():
    """What the writer keeps of a metadata-level event the database refused: the contract's
    shape, ids, tokens and roles, no text; it still decodes (a replay stores it as metadata)."""
    from mes.privacy.policy import without_content

    event = decoded(error("conv-x", [{"role": "user", "content": SECRET}], message="bad"))
    event = {**event, "capture": None}
    chat_event = decoded(chat("conv-x", [{"role": "user", "content": SECRET, "name": "bob"}], SECRET))
    for ev in (event, chat_event):
        bare = without_content(ev)
        assert SECRET not in orjson.dumps(bare).decode() and "bob" not in orjson.dumps(bare).decode()
        again = decode_event(orjson.dumps(bare))
        assert again["capture"] == "metadata" and again["event_id"] == ev["event_id"]
    assert decode_event(orjson.dumps(without_content(chat_event)))["response"]["usage"]["total_tokens"] == 30


def _rows(storage: Storage, base: str) -> int:
    q = storage.engine.dialect.identifier_preparer.quote
    with storage.engine.connect() as conn:
        return sum(
            int(conn.execute(text(f"SELECT count(*) FROM {q(name)}")).scalar_one())
            for name in storage.catalog.refresh()
            if name.startswith(base)
        )


def test_none_keeps_no_message_row_only_counts_and_the_rollups_equal_a_recount(backend):
    """MES_CAPTURE=none: no history or error row at all, no byte of content; the index
    and rollups count the requests, tokens and errors (no message: none is stored),
    recounted from mes_uncaptured; deleting the conversation leaves nothing."""
    storage = backend.storage()
    privacy(storage, MES_CAPTURE="none")
    events = [*two_turns("conv-none"), decoded(error("conv-none", [{"role": "user", "content": SECRET}]))]
    result = storage.writer.write(events)
    assert result.applied == 3 and result.rows == 0 and result.error_rows == 0
    assert (
        _rows(storage, "conversation_histories") == 0 and _rows(storage, "error_conversation_histories") == 0
    )
    assert _rows(storage, "mes_uncaptured") == 3
    assert (
        found(storage, "launch code") == [] and found(storage, "丁香") == [] and found(storage, EMAIL) == []
    )
    conv = HistoryReader(storage).get_conversation("conv-none", user_id=1)
    assert conv is not None and conv["message_count"] == 0 and conv["title"] == "" and conv["models"] == {}
    assert conv["request_count"] == 2 and conv["total_tokens"] == 60 and conv["error_count"] == 1
    assert_consistent(storage)
    from mes.storage.delete import delete_conversation

    assert delete_conversation(storage, 1, "conv-none")
    assert _rows(storage, "mes_uncaptured") == 0
    assert HistoryReader(storage).get_conversation("conv-none", user_id=1) is None
    assert_consistent(storage)


def test_none_and_full_in_one_conversation_stay_exact_through_drop_archive_restore(backend, tmp_path):
    """A conversation with requests at every level, across two days: a recount equals the
    index and rollups after writing, archiving and dropping a day, and restoring it."""
    from mes.storage.partitions import archive_day, restore_archive

    rules = tmp_path / "capture.toml"
    rules.write_text('[[rule]]\ncapture = "none"\nuser_id = [9]\n')
    storage = backend.storage()
    privacy(storage, MES_CAPTURE_RULES=str(rules))
    day2 = BASE_MS + 86_400_000
    events = [
        *two_turns("mixed", user_id=9),
        *two_turns("mixed", user_id=8),
        decoded(
            chat("mixed", [{"role": "user", "content": "later"}], "ok", user_id=8, ms=day2, capture="none")
        ),
        decoded(chat("mixed", [{"role": "user", "content": "later"}], "ok", user_id=9, ms=day2)),
    ]
    storage.writer.write(events)
    assert found(storage, "launch code")  # user 8's full requests
    assert_consistent(storage)
    day = storage.calendar.day_of(BASE_MS)
    path = str(tmp_path / "day.jsonl.gz")
    counts = archive_day(storage, day, path)
    assert counts["uncaptured"] == 2
    assert_consistent(storage)
    restored = restore_archive(storage, path)
    assert restored["uncaptured"] == 2
    assert_consistent(storage)
    assert HistoryReader(storage).get_conversation("mixed", user_id=9)["message_count"] == 0
    assert HistoryReader(storage).get_conversation("mixed", user_id=9)["request_count"] == 3


@pytest.mark.parametrize("prefix", [False, True])
def test_a_full_request_after_a_none_one_stores_what_it_sends_once_however_it_is_matched(backend, prefix):
    """A request kept in full that re-sends what a none request sent stores those messages
    as its own, once, whether it starts with the conversation's tail or not (a system
    prompt put in front, in a later batch: the transcript is read), and the counters
    equal the rows."""
    storage = backend.storage()
    privacy(storage)
    first = [{"role": "user", "content": "asked in private"}]
    storage.writer.write([decoded(chat("n-then-f", first, "answered in private", capture="none"))])
    assert found(storage, "in private") == []
    again = [
        *first,
        {"role": "assistant", "content": "answered in private"},
        {"role": "user", "content": "next"},
    ]
    if prefix:
        again = [{"role": "system", "content": "be brief"}, *again]
    storage.writer.write([decoded(chat("n-then-f", again, "done", ms=BASE_MS + 60_000))])
    messages = HistoryReader(storage).get_conversation_messages("n-then-f", user_id=1)
    assert messages is not None
    assert [m["content"] for m in messages] == [m["content"] for m in again] + ["done"]
    conv = HistoryReader(storage).get_conversation("n-then-f", user_id=1)
    assert conv["message_count"] == len(again) + 1 and conv["request_count"] == 2
    assert_consistent(storage)


def _dead(storage: Storage) -> list[tuple[bytes, str]]:
    with storage.engine.connect() as conn:
        return [(bytes(p), r) for p, r in conn.execute(text("SELECT payload, reason FROM mes_dead_letters"))]


def test_dead_letters_keep_no_more_than_the_policy_allows(backend):
    """What the worker could not decode goes through the same policy: an event that reads
    as one is kept at its level (a misspelt capture level included: it counts as
    metadata), or redacted; bytes the rules cannot be applied to are kept only when no
    event may be kept at less than full. The fingerprint stays the raw payload's."""
    from mes.storage import DeadLetter

    storage = backend.storage()
    invalid = orjson.dumps({"user_id": 1, "kind": "chat", "messages": [{"role": "user", "content": SECRET}]})
    misspelt = orjson.dumps({**chat("c", [{"role": "user", "content": SECRET}], "x"), "capture": "metadtaa"})
    garbage = f'{{"user_id": 1, "messages": "{SECRET} {EMAIL}" torn'.encode()
    letters = [DeadLetter(invalid, "kind: bad"), DeadLetter(misspelt, "capture: bad"),
               DeadLetter(garbage, "not valid JSON")]  # fmt: skip
    privacy(storage)  # everything kept: only the event's own (misspelt) level lowers it
    storage.writer.write([], letters[1:2])
    assert found(storage, "launch code") == []
    storage.writer.write([], letters[2:])
    assert found(storage, "launch code")  # garbage, and every level full: kept as it came
    with storage.engine.begin() as conn:
        conn.execute(text("DELETE FROM mes_dead_letters"))
    privacy(storage, MES_CAPTURE="metadata")
    storage.writer.write([], letters)
    assert found(storage, "launch code") == [] and found(storage, EMAIL) == []
    kept = {reason.split(" (")[0]: payload for payload, reason in _dead(storage)}
    assert orjson.loads(kept["kind: bad"])["messages"] == [{"role": "user", "content": None}]
    assert kept["not valid JSON"] == b""
    with storage.engine.connect() as conn:
        prints = {r[0] for r in conn.execute(text("SELECT fingerprint FROM mes_dead_letters"))}
    assert prints == {letter.fingerprint for letter in letters}
    with storage.engine.begin() as conn:
        conn.execute(text("DELETE FROM mes_dead_letters"))
    privacy(storage, MES_REDACT="default")
    storage.writer.write([], letters[2:])
    assert found(storage, EMAIL) == [] and found(storage, "[EMAIL]") and found(storage, "launch code")


def test_content_retention_stops_when_its_time_is_up_and_goes_on_from_there(backend):
    """A pass with a time budget erases batch by batch and stops once it is spent: the
    rows it reached are erased and recorded, the next pass goes on past them."""
    from mes.storage.expiry import expire_content

    storage = backend.storage()
    storage.writer.write([decoded(chat(f"conv-{i}", [{"role": "user", "content": f"{SECRET} {i}"}], "a"))
                          for i in range(12)])  # fmt: skip
    first = expire_content(storage, 30, batch=5, seconds=0)
    assert not first.finished and sum(first.rows.values()) == 5
    # rows go a question, its answer, ...: 3 of 12 questions erased; the 12 titles go once the rows have
    assert len(found(storage, "launch code")) == 9 + 12
    passes = [first]
    while not passes[-1].finished:
        passes.append(expire_content(storage, 30, batch=5, seconds=0))
    assert sum(sum(p.rows.values()) for p in passes) == 24 and found(storage, "launch code") == []
    assert HistoryReader(storage).get_conversation("conv-3", user_id=1)["title"] == ""
    assert_consistent(storage)
