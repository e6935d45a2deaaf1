"""Cost of a proxied request (pure)."""

from __future__ import annotations

import pytest

from router.cost import BadCost, estimate, payload_cost


@pytest.mark.parametrize(
    ("header", "body", "want"),
    [
        ("42", {"max_tokens": 7}, 42.0),  # X-Cost wins
        (None, {"max_tokens": 100, "prompt": "x" * 40}, 110.0),
        (None, {"max_completion_tokens": 8}, 8.0),
        (None, {"max_new_tokens": 9}, 9.0),
        (None, {"inputs": "abcd", "parameters": {"max_new_tokens": 20}}, 21.0),
        (None, {"messages": [{"role": "user", "content": "x" * 8}], "max_tokens": 4}, 6.0),
        (None, {"width": 512, "height": 512, "num_inference_steps": 30}, 512 * 512 * 30.0),
        (None, {"width": 64, "height": 64}, 64 * 64.0),
        (None, {"max_tokens": True, "prompt": ""}, 5.0),  # booleans are not numbers
        (None, {"max_tokens": -3}, 5.0),
        (None, {"unrelated": 1}, 5.0),
        (None, None, 5.0),
        (None, [1, 2], 5.0),
    ],
)
def test_estimate(header: str | None, body: object, want: float) -> None:
    assert estimate(header, body, default=5.0) == want


@pytest.mark.parametrize("header", ["lots", "-1", "nan", "inf", "1e400"])
def test_bad_x_cost(header: str) -> None:
    with pytest.raises(BadCost):
        estimate(header, None, 1.0)


def nested(inner: object, levels: int) -> object:
    for _ in range(levels):
        inner = [inner]
    return inner


@pytest.mark.parametrize("field", ["prompt", "inputs", "messages", "input"])
def test_deep_nesting_is_walked_without_recursion(field: str) -> None:
    deep = nested({"role": "user", "content": "x" * 400}, 5000)
    assert estimate(None, {field: deep, "max_tokens": 4}, 5.0) == 4.0  # too deep: 0 chars
    assert payload_cost({field: deep}) is None


def test_text_nested_up_to_64_levels_counts() -> None:
    # The body is one level: a string inside it and 63 lists is 64 deep and counts.
    assert payload_cost({"inputs": nested("x" * 40, 63)}) == 10.0
    assert payload_cost({"inputs": nested("x" * 40, 64)}) is None
    msg = {"role": "user", "content": "x" * 40}  # the content of an object is a level too
    assert payload_cost({"messages": nested(msg, 62)}) == 10.0
    assert payload_cost({"messages": nested(msg, 63)}) is None
    wide = {"messages": [msg] * 10_000, "prompt": ["ab", ["cd", {"content": ["ef"]}]]}
    assert payload_cost(wide) == (400_000 + 6) / 4


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ({"inputs": "What is deep learning?", "parameters": {"max_new_tokens": 16}}, 21.5),
        ({"max_tokens": 0}, 0.0),  # asks for nothing: free, not unknown
        ({"width": 8, "height": 8, "num_inference_steps": 0}, 64.0),
        ({"parameters": {"max_new_tokens": "16"}}, None),
        ({"parameters": None, "inputs": 7}, None),
        ({"unrelated": 1}, None),
        ({}, None),
        (None, None),
        ("text", None),
        ([{"max_tokens": 3}], None),
    ],
)
def test_payload_cost(body: object, want: float | None) -> None:
    assert payload_cost(body) == want


def test_max_cost() -> None:
    assert estimate("1000", None, 1.0, max_cost=1000) == 1000.0
    assert estimate(None, {"max_tokens": 1000}, 1.0, max_cost=1000) == 1000.0
    with pytest.raises(BadCost):
        estimate("1000.5", None, 1.0, max_cost=1000)
    with pytest.raises(BadCost):
        estimate(None, {"max_tokens": 996, "prompt": "x" * 20}, 1.0, max_cost=1000)
    with pytest.raises(BadCost):
        estimate(None, {"width": 1e200, "height": 1e200}, 1.0)  # overflows to inf
    with pytest.raises(BadCost):
        estimate("2e9", None, 1.0)  # the default limit is 1e9
    assert estimate(None, {"unrelated": 1}, 5.0, max_cost=1) == 5.0  # the default is not checked
