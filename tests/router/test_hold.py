"""Held requests take turns in arrival order (router/hold.py)."""

from __future__ import annotations

import asyncio

import pytest

from router.hold import HoldRefused, Holds
from router.metrics import Metrics


def later(s: float) -> float:
    return asyncio.get_running_loop().time() + s


async def test_turns_go_in_arrival_order_and_are_passed_on() -> None:
    holds = Holds(Metrics())
    order: list[int] = []

    async def request(i: int) -> None:
        assert await holds.wait_turn("e", later(5), 10)
        order.append(i)
        holds.done("e", placed=True)  # placed: the next one gets its turn

    tasks = [asyncio.create_task(request(i)) for i in range(5)]
    await asyncio.sleep(0)
    assert holds.held("e") == 5 and order == []
    holds.kick("e")  # one change: the chain serves all five, in order
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert holds.held("e") == 0


async def test_a_waiter_that_cannot_be_placed_keeps_its_place() -> None:
    holds = Holds(Metrics())
    order: list[str] = []
    capacity = [0]

    async def request(name: str) -> None:
        again = False
        while True:
            assert await holds.wait_turn("e", later(5), 10, first=again)
            if capacity[0] > 0:
                capacity[0] -= 1
                order.append(name)
                holds.done("e", placed=True)
                return
            holds.done("e", placed=False)  # stops the chain; it stays first
            again = True

    tasks = [asyncio.create_task(request(n)) for n in "abc"]
    await asyncio.sleep(0)
    holds.kick("e")
    await asyncio.sleep(0.01)
    assert order == [] and holds.held("e") == 3  # no herd: one try, then wait
    capacity[0] = 1
    holds.kick("e")
    await asyncio.sleep(0.01)
    assert order == ["a"]
    capacity[0] = 2
    holds.kick("e")
    await asyncio.gather(*tasks)
    assert order == ["a", "b", "c"]


async def test_bounds_deadline_and_hang_ups() -> None:
    holds = Holds(Metrics())
    waiting = [asyncio.create_task(holds.wait_turn("e", later(5), 2)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(HoldRefused):
        await holds.wait_turn("e", later(5), 2)
    assert await holds.wait_turn("f", later(0.05), 2) is False  # past its deadline
    waiting[0].cancel()  # the first client hangs up: it leaves the queue
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
    assert holds.held("e") == 1
    holds.kick("e")
    assert await waiting[1] is True  # the turn went to the one still waiting
    holds.done("e", placed=True)


async def test_a_turn_given_to_one_that_hung_up_is_passed_on() -> None:
    holds = Holds(Metrics())
    a = asyncio.create_task(holds.wait_turn("e", later(5), 5))
    b = asyncio.create_task(holds.wait_turn("e", later(5), 5))
    await asyncio.sleep(0)
    holds.kick("e")  # a's turn...
    a.cancel()  # ...but a is gone before it could use it
    with pytest.raises(asyncio.CancelledError):
        await a
    assert await asyncio.wait_for(b, 1) is True
