"""Turn digests and the transcript (pure): the memo gives exactly the definition's digests;
placement leaves stored rows where they are; contexts encode and decode."""

from __future__ import annotations

from hashlib import blake2b
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mes.storage import turns
from mes.storage.transcript import GAP, Entry, Transcript, align, decode_context, encode_context
from mes.storage.turns import message_digests, turn_key

roles = st.sampled_from(["system", "user", "assistant", "tool", "", None])
contents = st.one_of(
    st.text(max_size=40),
    st.none(),
    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text()})),
)
messages = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": roles, "content": contents}),
        st.fixed_dictionaries({"role": roles, "content": contents, "name": st.text(max_size=5)}),
        st.fixed_dictionaries({"content": st.text(max_size=5), "name": st.text(max_size=5)}),
        st.fixed_dictionaries({"content": st.text(max_size=5), "tool_call_id": st.text(max_size=5)}),
    ),
    max_size=6,
)


def by_definition(history: list[dict[str, Any]]) -> list[bytes]:
    return [blake2b(turn_key(m), digest_size=16).digest() for m in history]


@given(history=messages)
def test_digests_remembered_or_not_equal_the_definition(history):
    expected = by_definition(history)
    assert message_digests(history) == expected  # first sight (or remembered from another example)
    assert message_digests([dict(m) for m in history]) == expected  # the same turns re-sent


def test_the_memo_keeps_at_most_two_generations_of_text():
    memo = turns._Memo(limit=1000)
    for n in range(100):
        memo.digest({"role": "user", "content": f"{n:03d}" + "x" * 97})
    assert memo.chars <= 1000
    assert sum(len(k[1]) for k in memo.new) + sum(len(k[1]) for k in memo.old) <= 2000
    hi = {"role": "user", "content": "hi"}
    assert memo.digest(hi) == blake2b(turn_key(hi), digest_size=16).digest()


@given(st.lists(st.integers(1, 60), max_size=40))
def test_a_context_decodes_to_the_ordinals_it_encodes(ordinals):
    assert decode_context(encode_context(ordinals)) == ordinals


def _entry(position: int, ordinal: int, digest: bytes) -> Entry:
    return Entry(position, ordinal, digest, False, f"m{ordinal}", "m", 0, None)


@given(
    stored=st.lists(st.sampled_from([b"a", b"b", b"c", b"d"]), max_size=12),
    request=st.lists(st.sampled_from([b"a", b"b", b"c", b"e"]), max_size=12),
)
def test_new_messages_are_placed_between_their_neighbours_without_moving_stored_rows(stored, request):
    """Matches are in order; new messages get positions strictly between the stored rows
    around them (or after the end), in request order; stored positions do not change."""
    transcript = Transcript(_entry(GAP * (i + 1), i + 1, d) for i, d in enumerate(stored))
    before = [e.position for e in transcript.entries]
    matches = align(transcript.digests(), request)
    hits = [m for m in matches if m is not None]
    assert hits == sorted(set(hits))
    for i, m in enumerate(matches):
        if m is not None:
            assert stored[m] == request[i]
    positions = transcript.place(matches, end=GAP * len(stored))
    assert len(positions) == matches.count(None)
    assert [e.position for e in transcript.entries] == before
    it = iter(positions)
    laid = [before[m] if m is not None else next(it) for m in matches]
    assert laid == sorted(laid) and len(set(laid)) == len(laid)  # request order is transcript order


def test_a_gap_inserted_into_again_and_again_keeps_its_order():
    """A system prompt that changes with every request goes before the first turn each time."""
    transcript = Transcript([_entry(GAP, 1, b"q")])
    for n in range(50):
        matches = align(transcript.digests(), [b"s%d" % n, b"q"])
        (position,) = transcript.place(matches, end=GAP)
        transcript.add(_entry(position, n + 2, b"s%d" % n))
    assert [e.digest for e in transcript.entries] == [*(b"s%d" % n for n in range(50)), b"q"]


@given(st.text(alphabet=st.sampled_from("ab \n\t\u3000你"), max_size=1200))
def test_a_title_is_the_first_user_text_normalised_however_long(text):
    from mes.storage.rollup import TITLE_LEN, conversation_title

    assert (
        conversation_title([{"role": "system", "content": "x"}, {"role": "user", "content": text}])
        == (" ".join(text.split())[:TITLE_LEN])
    )


@given(st.lists(st.integers(1, 30), max_size=20), st.lists(st.integers(1, 30), max_size=20))
def test_joining_two_encoded_contexts_is_encoding_them_together(a, b):
    from mes.storage.transcript import join_context

    assert join_context(encode_context(a), encode_context(b)) == encode_context(a + b)
