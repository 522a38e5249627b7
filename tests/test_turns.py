"""Chain ids (pure): the memo of re-sent turns gives exactly the digests of the definition."""

from __future__ import annotations

from hashlib import blake2b
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mes.storage import turns
from mes.storage.turns import chain_ids, chain_seed, turn_key

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


def by_definition(seed: bytes, history: list[dict[str, Any]]) -> list[bytes]:
    out, prev = [], seed
    for message in history:
        prev = blake2b(prev + turn_key(message), digest_size=16).digest()
        out.append(prev)
    return out


@given(history=messages, user=st.integers(0, 3), conversation=st.sampled_from(["a", "b"]))
def test_chain_ids_remembered_or_not_equal_the_definition(history, user, conversation):
    seed = chain_seed(user, conversation)
    expected = by_definition(seed, history)
    assert chain_ids(seed, history) == expected  # first sight (or remembered from another example)
    assert chain_ids(seed, [dict(m) for m in history]) == expected  # the same turns re-sent


def test_the_memo_keeps_at_most_two_generations_of_text():
    memo = turns._Memo(limit=1000)
    prev = b"\0" * 16
    for n in range(100):
        prev = memo.digest(prev, {"role": "user", "content": f"{n:03d}" + "x" * 97})
    assert memo.chars <= 1000
    assert sum(len(k[2]) for k in memo.new) + sum(len(k[2]) for k in memo.old) <= 2000
    assert (
        memo.digest(b"\1" * 16, {"role": "user", "content": "hi"})
        == blake2b(b"\1" * 16 + turn_key({"role": "user", "content": "hi"}), digest_size=16).digest()
    )


@given(st.text(alphabet=st.sampled_from("ab \n\t\u3000你"), max_size=1200))
def test_a_title_is_the_first_user_text_normalised_however_long(text):
    from mes.storage.plan import TITLE_LEN, _title

    assert (
        _title([{"role": "system", "content": "x"}, {"role": "user", "content": text}])
        == (" ".join(text.split())[:TITLE_LEN])
    )
