"""The topic trie: binding patterns stored word by word, matched in one walk.

A publish costs time in the length of its routing key and the number of trie nodes it can
reach, not in the number of bindings (as RabbitMQ's and NATS's tries). Words are split on
``.``; ``*`` matches exactly one word, ``#`` zero or more; the empty key is zero words.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


def split_words(key: str) -> list[str]:
    """``""`` is zero words; ``"a..b"`` is three, the middle one empty."""
    return key.split(".") if key else []


def pattern_words(pattern: str) -> list[str]:
    """A binding pattern's words in a canonical form that matches the same keys.

    A run of wildcards holding at least one ``#`` matches "at least as many words as it has
    ``*``s", so it is rewritten as those ``*``s then a single ``#``: ``#.#.#`` becomes ``#`` and
    ``#.*.#`` becomes ``*.#``. Matching cost grows with the ``#`` nodes a key can reach, so this
    keeps a hostile pattern of many ``#`` words as cheap as one.
    """
    words = split_words(pattern)
    if words.count("#") < 2 and "#.*" not in pattern:
        return words  # the common case: nothing to rewrite
    out: list[str] = []
    run: list[str] = []
    for word in [*words, ""]:  # a sentinel ends the last run
        if word in ("*", "#"):
            run.append(word)
            continue
        if run:
            stars = run.count("*")
            out.extend(["*"] * stars + (["#"] if stars < len(run) else []))
            run = []
        out.append(word)
    return out[:-1]


class _Node(Generic[V]):
    __slots__ = ("children", "hash", "star", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node[V]] = {}
        self.star: _Node[V] | None = None
        self.hash: _Node[V] | None = None
        self.values: dict[Hashable, V] = {}

    def is_empty(self) -> bool:
        return not (self.children or self.star or self.hash or self.values)


class TopicTrie(Generic[V]):
    """Maps binding patterns to values; ``match(key)`` returns the values whose pattern matches.

    Each value is stored under an identity (``ident``) so one pattern can hold many values and
    removing one leaves the others.
    """

    def __init__(self) -> None:
        self._root: _Node[V] = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, pattern: str, ident: Hashable, value: V) -> None:
        node = self._root
        for word in pattern_words(pattern):
            node = self._child(node, word)
        if ident not in node.values:
            self._count += 1
        node.values[ident] = value

    def remove(self, pattern: str, ident: Hashable) -> bool:
        """Remove one value; prune nodes left empty. Returns whether it was there."""
        path: list[tuple[_Node[V], str]] = []
        node = self._root
        for word in pattern_words(pattern):
            nxt = self._step(node, word)
            if nxt is None:
                return False
            path.append((node, word))
            node = nxt
        if node.values.pop(ident, None) is None:
            return False
        self._count -= 1
        for parent, word in reversed(path):
            child = self._step(parent, word)
            if child is None or not child.is_empty():
                break
            if word == "*":
                parent.star = None
            elif word == "#":
                parent.hash = None
            else:
                del parent.children[word]
        return True

    def match(self, routing_key: str) -> list[V]:
        """Values of every pattern matching ``routing_key`` (each value once)."""
        words = split_words(routing_key)
        n = len(words)
        found: dict[Hashable, V] = {}
        seen: set[tuple[int, int]] = set()
        stack: list[tuple[_Node[V], int, bool]] = [(self._root, 0, False)]
        while stack:
            node, i, is_hash = stack.pop()
            mark = (id(node), i)
            if mark in seen:
                continue
            seen.add(mark)
            if is_hash and i < n:
                stack.append((node, i + 1, True))  # '#' swallows one more word
            if node.hash is not None:
                stack.append((node.hash, i, True))  # '#' matching zero words so far
            if i == n:
                found.update(node.values)
                continue
            child = node.children.get(words[i])
            if child is not None:
                stack.append((child, i + 1, False))
            if node.star is not None:
                stack.append((node.star, i + 1, False))
        return list(found.values())

    def __iter__(self) -> Iterator[V]:
        stack = [self._root]
        while stack:
            node = stack.pop()
            yield from node.values.values()
            stack.extend(node.children.values())
            stack.extend(n for n in (node.star, node.hash) if n is not None)

    @staticmethod
    def _step(node: _Node[V], word: str) -> _Node[V] | None:
        if word == "*":
            return node.star
        if word == "#":
            return node.hash
        return node.children.get(word)

    @staticmethod
    def _child(node: _Node[V], word: str) -> _Node[V]:
        if word == "*":
            if node.star is None:
                node.star = _Node()
            return node.star
        if word == "#":
            if node.hash is None:
                node.hash = _Node()
            return node.hash
        child = node.children.get(word)
        if child is None:
            child = node.children[word] = _Node()
        return child
