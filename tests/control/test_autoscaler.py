"""The autoscaling policy, one rule per test, over crafted histories."""

from __future__ import annotations

from router.control.autoscaler import (
    DEFAULT_PERF,
    LONG_WINDOW_S,
    PANIC_HOLD_S,
    REASONS,
    SCALE_DOWN_DELAY_S,
    Decision,
    ScaleMemory,
    WorkerView,
    desired,
)
from router.control.spec import Autoscaling

AUTO = Autoscaling(min_workers=0, max_workers=50, target_util=0.9, inactivity_timeout_s=120)
T0 = 10_000.0


def ready(n: int, perf: float = 100.0) -> list[WorkerView]:
    return [WorkerView(perf, "ready") for _ in range(n)]


def starting(n: int, perf: float = 100.0) -> list[WorkerView]:
    return [WorkerView(perf, "starting") for _ in range(n)]


def flat(rate: float, n: int = LONG_WINDOW_S) -> list[float]:
    return [rate] * n


def old_memory() -> ScaleMemory:
    """Memory of a loop that has been deciding for a long time (no start-up delay)."""
    return ScaleMemory(since=T0 - 1000)


def decide(
    history: list[float],
    fleet: list[WorkerView],
    settings: Autoscaling = AUTO,
    now: float = T0,
    memory: ScaleMemory | None = None,
    last_activity: float = T0,
    held: int = 0,
    held_cost: float = 0.0,
) -> Decision:
    d = desired(
        history,
        fleet,
        settings,
        now,
        old_memory() if memory is None else memory,
        last_activity,
        held,
        held_cost=held_cost,
    )
    assert d.reason in REASONS
    assert settings.min_workers <= d.workers <= settings.max_workers
    return d


def test_step_up_covers_predicted_load_over_target_util() -> None:
    # 190 cost/s steady on two 100-perf workers: 190 / 0.9 = 211 -> 3 workers
    d = decide(flat(190), ready(2))
    assert (d.workers, d.direction, d.reason) == (3, "up", "load")
    # a step in the last 6 s is seen at once (the short window), not after a minute
    d = decide(flat(0, 54) + flat(450, 6), ready(1))
    assert (d.workers, d.direction, d.reason) == (5, "up", "burst")  # 450 >= 2 x 100


def test_new_workers_have_the_fleets_mean_perf() -> None:
    d = decide(flat(900), ready(1, 100) + ready(1, 300))  # mean 200: 1000 needed, 400 there
    assert d.workers == 2 + 3
    mem = old_memory()
    decide(flat(0), ready(1, 250), memory=mem)
    d = decide(flat(450), [], memory=mem)  # no worker now: the last mean seen
    assert d.workers == 2
    assert decide(flat(450), []).workers == 5 == -(-500 // DEFAULT_PERF)


def test_steady_load_holds() -> None:
    d = decide(flat(170), ready(2))
    assert (d.workers, d.direction, d.reason) == (2, "hold", "steady")


def test_burst_never_scales_down() -> None:
    mem = old_memory()
    d = decide(flat(100, 54) + flat(2000, 6), ready(5), memory=mem)
    assert d.direction == "up" and d.reason == "burst"
    # the burst is over and 20 workers would be too many, but panic holds for a while
    for t in range(10, int(PANIC_HOLD_S), 10):
        d = decide(flat(100), ready(20), now=T0 + t, memory=mem)
        assert (d.workers, d.direction, d.reason) == (20, "hold", "burst"), t
    d = decide(flat(100), ready(20), now=T0 + PANIC_HOLD_S + 1, memory=mem)
    assert (d.workers, d.direction, d.reason) == (2, "down", "idle")


def test_scale_down_waits_for_the_delay() -> None:
    mem = ScaleMemory()
    for t in (0.0, 10.0, SCALE_DOWN_DELAY_S - 1):  # a fresh loop decides nothing down yet
        d = decide(flat(100), ready(10), now=T0 + t, memory=mem)
        assert (d.workers, d.reason) == (10, "delay"), t
    d = decide(flat(100), ready(10), now=T0 + SCALE_DOWN_DELAY_S, memory=mem)
    assert (d.workers, d.direction, d.reason) == (2, "down", "idle")


def test_scale_down_goes_only_as_low_as_the_delay_windows_max_need() -> None:
    mem = old_memory()
    decide(flat(800), ready(9), now=T0, memory=mem)  # 9 needed now
    decide(flat(400), ready(9), now=T0 + 10, memory=mem)  # 5 from here on
    d = decide(flat(100), ready(9), now=T0 + 20, memory=mem)  # 2: not for 30 s yet
    assert (d.workers, d.reason) == (9, "delay")
    d = decide(flat(100), ready(9), now=T0 + 10 + SCALE_DOWN_DELAY_S - 1, memory=mem)
    assert (d.workers, d.reason) == (9, "delay")  # 9 was still needed 30 s ago
    d = decide(flat(100), ready(9), now=T0 + 10 + SCALE_DOWN_DELAY_S, memory=mem)
    assert (d.workers, d.direction) == (5, "down")  # 9 fell out of the window, 5 did not
    d = decide(flat(100), ready(5), now=T0 + 20 + SCALE_DOWN_DELAY_S, memory=mem)
    assert (d.workers, d.direction) == (2, "down")


def test_starting_workers_count_as_capacity() -> None:
    # 3 starting cover the load: nothing more is started
    d = decide(flat(250), ready(0) + starting(3))
    assert (d.workers, d.direction) == (3, "hold")
    d = decide(flat(400), ready(1) + starting(3))
    assert (d.workers, d.direction) == (5, "up")


def test_starting_workers_are_never_stopped_for_idleness() -> None:
    long_ago = T0 - 10_000
    idle = Autoscaling(min_workers=0, max_workers=10, inactivity_timeout_s=0)
    d = decide(flat(0), starting(2), settings=idle, last_activity=long_ago)
    assert (d.workers, d.direction) == (2, "hold")
    # a ready worker that is not needed may go; the starting ones stay
    d = decide(flat(0), ready(2) + starting(2), settings=idle, last_activity=long_ago)
    assert (d.workers, d.direction) == (2, "down")
    # the ready worker serving the load now is kept too: a starting one does not replace it
    d = decide(flat(80), ready(1) + starting(3))
    assert (d.workers, d.direction) == (4, "hold")


def test_scale_to_zero_only_after_the_inactivity_timeout() -> None:
    auto = Autoscaling(min_workers=0, max_workers=10, inactivity_timeout_s=120)
    d = decide(flat(0), ready(1), settings=auto, last_activity=T0 - 100)
    assert (d.workers, d.direction, d.reason) == (1, "hold", "inactivity")
    d = decide(flat(0), ready(1), settings=auto, last_activity=T0 - 120)
    assert (d.workers, d.direction, d.reason) == (0, "down", "inactivity")
    # idle means nothing routed for the whole long window
    d = decide([*flat(0, 59), 5.0], ready(1), settings=auto, last_activity=T0 - 500)
    assert d.workers == 1
    never = Autoscaling(min_workers=0, max_workers=10, inactivity_timeout_s=None)
    assert decide(flat(0), ready(1), settings=never, last_activity=0).workers == 1
    at_once = Autoscaling(min_workers=0, max_workers=10, inactivity_timeout_s=0)
    assert decide(flat(0), ready(1), settings=at_once, last_activity=T0).workers == 0


def test_the_last_stage_follows_the_delay_from_many_workers() -> None:
    auto = Autoscaling(min_workers=0, max_workers=10, inactivity_timeout_s=300)
    d = decide(flat(0), ready(4), settings=auto, last_activity=T0 - 100)
    assert (d.workers, d.reason) == (1, "idle")  # n -> 1 by the delay, 1 -> 0 by the timeout


def test_min_and_max_workers_clamp() -> None:
    auto = Autoscaling(min_workers=2, max_workers=4, inactivity_timeout_s=0)
    d = decide(flat(0), [], settings=auto, last_activity=0)
    assert (d.workers, d.direction, d.reason) == (2, "up", "min_workers")
    d = decide(flat(0), ready(3), settings=auto, last_activity=0)
    assert (d.workers, d.direction, d.reason) == (2, "down", "min_workers")
    d = decide(flat(5000), ready(3), settings=auto)
    assert (d.workers, d.direction, d.reason) == (4, "up", "max_workers")
    d = decide(flat(0), ready(6), settings=auto)
    assert (d.workers, d.direction, d.reason) == (2, "down", "min_workers")


def test_held_requests_on_a_cold_endpoint_start_one_at_once() -> None:
    # nothing in the history yet (the request is held, not routed): one worker anyway
    d = decide(flat(0), [], last_activity=0, held=3, memory=ScaleMemory())
    assert (d.workers, d.direction, d.reason) == (1, "up", "held")
    # an idle endpoint past its timeout keeps its last worker while a request is held
    auto = Autoscaling(min_workers=0, max_workers=10, inactivity_timeout_s=0)
    d = decide(flat(0), ready(1), settings=auto, last_activity=0, held=1)
    assert d.workers == 1


def test_a_cold_start_counts_only_the_seconds_since_idle() -> None:
    # a step from idle: the 6 s mean is 1/6 of it, but requests wait and nothing is ready
    step = [*flat(0, 58), 300.0, 900.0]
    assert decide(step, [], held=3).workers == 7  # (300 + 900) / 2 / 0.9 / 100
    assert decide(step, ready(1)).workers == 3  # with a ready worker: the 6 s mean, 200


def test_held_cost_asks_for_capacity_to_drain_the_queue() -> None:
    # the arrival rate is covered, but 90 cost x 100 held requests wait
    d = decide(flat(150), ready(2), held=100, held_cost=9000)
    assert d.direction == "up" and d.reason == "held"
    assert d.workers == 2 + 10  # 9000 / 10 s / 0.9 = 1000 more cost/s


def test_min_load_floor() -> None:
    auto = Autoscaling(min_workers=0, max_workers=10, min_load=250, inactivity_timeout_s=0)
    d = decide(flat(0), ready(1), settings=auto, last_activity=0)
    assert (d.workers, d.direction, d.reason) == (3, "up", "min_load")
    d = decide(flat(0), ready(3), settings=auto, last_activity=0)
    assert (d.workers, d.direction) == (3, "hold")  # never to zero while min_load > 0


def test_draining_workers_are_not_capacity() -> None:
    fleet = [*ready(1), WorkerView(100.0, "draining")]
    d = decide(flat(150), fleet)
    assert (d.workers, d.direction) == (2, "up")


def test_short_history_at_start() -> None:
    d = decide([300.0, 300.0], [], memory=ScaleMemory(), last_activity=T0)
    assert (d.workers, d.direction) == (4, "up")
    d = decide([], [], memory=ScaleMemory(), last_activity=T0)
    assert (d.workers, d.direction) == (0, "hold")
