"""Cost of a proxied request (pure)."""

from __future__ import annotations

import pytest

from router.cost import BadCost, estimate


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
