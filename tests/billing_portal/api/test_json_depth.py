"""The nesting pre-scan agrees with the decoded document's real depth, whatever the
strings hold (brackets, quotes, backslashes, escapes)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from billing_portal.web import json_nesting_exceeds

TRICKY_TEXT = st.text(alphabet='[]{}"\\ \x00é/u0', max_size=12)
DOCUMENTS = st.recursive(
    st.none() | st.booleans() | st.integers() | TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TRICKY_TEXT, inner, max_size=4),
    max_leaves=40,
)


def _depth(node: Any) -> int:
    if isinstance(node, dict):
        return 1 + max(map(_depth, node.values()), default=0)
    if isinstance(node, list):
        return 1 + max(map(_depth, node), default=0)
    return 0


def _nest(node: Any, levels: int) -> Any:
    for index in range(levels):
        node = [node] if index % 2 else {"k": node}
    return node


@given(DOCUMENTS, st.integers(min_value=0, max_value=12), st.booleans())
def test_it_measures_the_depth_of_any_document(document: Any, extra: int, ascii_only: bool) -> None:
    document = _nest(document, extra)
    body = json.dumps(document, ensure_ascii=ascii_only).encode()
    depth = _depth(document)
    for limit in range(max(0, depth - 2), depth + 2):
        assert json_nesting_exceeds(body, limit) == (depth > limit), (body, limit)


def test_it_refuses_what_the_decoder_cannot_take() -> None:
    assert json_nesting_exceeds(b"[" * 100_000)
    assert json_nesting_exceeds(b'{"a":' * 10_000 + b"1" + b"}" * 10_000)
    assert not json_nesting_exceeds(b'"' + b"[" * 100_000 + b'"')
    assert not json_nesting_exceeds(b'["\\\\", "[[[[", "\\"[[[["]')


def test_malformed_bodies_are_left_to_the_decoder() -> None:
    assert not json_nesting_exceeds(b'"' + b"[" * 100_000)  # an unterminated string
    assert not json_nesting_exceeds(b'["a", "' + b"{" * 100_000)
    assert json_nesting_exceeds(b"[" * 100_000 + b'"')
