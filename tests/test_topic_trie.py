"""The topic trie: RabbitMQ's word rules, and agreement with a plain reference matcher."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqroute.core.topic_trie import TopicTrie, split_words
from mqroute.core.topic_trie import pattern_words as canonical_words


def reference_match(pattern: str, key: str) -> bool:
    """The obvious recursive definition; slow, but easy to trust."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        head, rest = p[0], p[1:]
        if head == "#":
            return any(match(rest, k[i:]) for i in range(len(k) + 1))
        if not k:
            return False
        return (head == "*" or head == k[0]) and match(rest, k[1:])

    return match(split_words(pattern), split_words(key))


CASES = [
    # pattern, routing key, matches
    ("#", "", True),
    ("#.#", "", True),
    ("", "", True),
    ("*", "", False),
    ("a", "", False),
    ("", "a", False),
    ("a.*", "a.b", True),
    ("a.*", "a.b.c", False),
    ("a.*", "a", False),
    ("*.created", "order.created", True),
    ("order.*", "order.created", True),
    ("stock.#", "stock", True),
    ("stock.#", "stock.usd.nyse", True),
    ("a.#.b", "a.b", True),
    ("a.#.b", "a.x.y.b", True),
    ("a.#.b", "a.x.y.c", False),
    ("#.b", "b", True),
    ("#.b", "a.b.b", True),
    ("a.#", "a", True),
    ("#.a.#", "x.a.y", True),
    ("a..b", "a..b", True),
    ("a.*.b", "a..b", True),
    ("a..b", "a.b", False),
    ("a#b", "a#b", True),
    ("a#b", "aXb", False),
    ("a*", "ab", False),
    ("a*", "a*", True),
    ("*.*", "a.b", True),
    ("*.*", "a", False),
    ("#.*", "", False),
    ("#.*", "a", True),
    ("*.#", "a.b.c", True),
    ("a.b", "a.b.", False),
    ("a.b.", "a.b.", True),
    ("a.#.#.b", "a.b", True),
]


@pytest.mark.parametrize(("pattern", "key", "expected"), CASES)
def test_topic_cases(pattern: str, key: str, expected: bool) -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add(pattern, pattern, pattern)
    assert (trie.match(key) == [pattern]) is expected
    assert reference_match(pattern, key) is expected


def test_each_value_is_returned_once_even_when_matched_twice() -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add("#.#", "q", "q")
    assert trie.match("a.b.c") == ["q"]


def test_remove_prunes_and_leaves_siblings() -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add("a.*.c", 1, "one")
    trie.add("a.*.c", 2, "two")
    trie.add("a.#", 3, "three")
    assert trie.remove("a.*.c", 1)
    assert not trie.remove("a.*.c", 1)
    assert sorted(trie.match("a.b.c")) == ["three", "two"]
    assert trie.remove("a.*.c", 2) and trie.remove("a.#", 3)
    assert len(trie) == 0
    assert trie._root.is_empty()


words = st.sampled_from(["a", "b", "c", ""])
pattern_words = st.sampled_from(["a", "b", "c", "", "*", "#"])


@settings(max_examples=400, deadline=None)
@given(
    patterns=st.lists(st.lists(pattern_words, max_size=5).map(".".join), max_size=8),
    key=st.lists(words, max_size=6).map(".".join),
)
def test_trie_agrees_with_reference_matcher(patterns: list[str], key: str) -> None:
    trie: TopicTrie[str] = TopicTrie()
    for p in patterns:
        trie.add(p, p, p)
    expected = sorted({p for p in patterns if reference_match(p, key)})
    assert sorted(trie.match(key)) == expected


@settings(max_examples=200, deadline=None)
@given(
    patterns=st.lists(st.lists(pattern_words, max_size=4).map(".".join), min_size=1, max_size=8),
    data=st.data(),
)
def test_removing_bindings_keeps_the_rest_matching(
    patterns: list[str], data: st.DataObject
) -> None:
    trie: TopicTrie[str] = TopicTrie()
    for i, p in enumerate(patterns):
        trie.add(p, i, p)
    removed = data.draw(st.sets(st.sampled_from(range(len(patterns)))))
    for i in removed:
        assert trie.remove(patterns[i], i)
    key = data.draw(st.lists(words, max_size=5).map(".".join))
    kept = [p for i, p in enumerate(patterns) if i not in removed]
    assert sorted(trie.match(key)) == sorted(p for p in kept if reference_match(p, key))
    assert len(trie) == len(kept)


@given(
    pattern=st.lists(pattern_words, max_size=8).map(".".join),
    key=st.lists(words, max_size=8).map(".".join),
)
@settings(max_examples=500)
def test_canonical_pattern_matches_the_same_keys(pattern: str, key: str) -> None:
    canonical = ".".join(canonical_words(pattern))
    assert reference_match(canonical, key) == reference_match(pattern, key)


@pytest.mark.parametrize(
    ("pattern", "canonical"),
    [("#.#.#", "#"), ("#.*.#", "*.#"), ("a.#.*.b", "a.*.#.b"), ("*.*", "*.*"), ("#", "#")],
)
def test_wildcard_runs_collapse_to_stars_then_one_hash(pattern: str, canonical: str) -> None:
    assert ".".join(canonical_words(pattern)) == canonical


def test_a_chain_of_hashes_costs_what_one_hash_costs() -> None:
    trie: TopicTrie[str] = TopicTrie()
    trie.add(".".join(["#"] * 128), "many", "many")
    assert trie.match(".".join(["w"] * 128)) == ["many"]
    assert trie.remove(".".join(["#"] * 128), "many") and len(trie) == 0
