import time

import pytest

from metta.common.profiling import Stopwatch, with_instance_timer, with_timer


def test_named_timers_laps_and_rates():
    sw = Stopwatch()
    sw.start()
    with sw("_rollout"):
        time.sleep(0.02)
    with sw.time("_train"):
        time.sleep(0.01)
    assert sw.get_elapsed("_rollout") >= 0.02 and sw.get_last_elapsed("_train") >= 0.01
    assert sw.get_elapsed() >= sw.get_elapsed("_rollout") + sw.get_elapsed("_train")
    assert set(sw.get_all_elapsed()) == {"global", "_rollout", "_train"}
    laps = sw.lap_all(100)
    assert set(laps) == {"_rollout", "_train"} and laps["_rollout"] == pytest.approx(sw.get_elapsed("_rollout"))
    with sw("_rollout"):
        time.sleep(0.01)
    second = sw.lap_all(300)
    assert 0.01 <= second["_rollout"] < 0.02 + 0.05 and second["_train"] == 0.0
    assert sw.get_lap_steps("_rollout") == 200
    assert sw.get_rate(1000) > 0
    sw.checkpoint(1000)
    remaining, rate = sw.estimate_remaining(1000, 2000)
    assert remaining == float("inf") or remaining >= 0
    assert Stopwatch.format_time(30) == "30.0 sec" and Stopwatch.format_time(120) == "2.0 min"
    assert sw.get_summary("_train")["is_running"] is False
    state = sw.save_state()
    restored = Stopwatch()
    restored.load_state(state)
    assert restored.get_elapsed("_rollout") == pytest.approx(state["_rollout"]["total_elapsed"])
    sw.reset("_train")
    assert sw.get_elapsed("_train") == 0.0
    sw.stop()


def test_stop_without_start_is_harmless():
    sw = Stopwatch()
    assert sw.stop("never") == 0.0


def test_decorators():
    sw = Stopwatch()

    @with_timer(sw, "work")
    def work(x):
        return x + 1

    class Trainer:
        def __init__(self):
            self.timer = Stopwatch()

        @with_instance_timer("step")
        def step(self):
            return "ok"

    assert work(1) == 2 and sw.get_elapsed("work") > 0
    t = Trainer()
    assert t.step() == "ok" and t.timer.get_elapsed("step") > 0
