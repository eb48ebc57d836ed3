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


def test_named_checkpoints_are_kept_and_the_rates_use_the_latest_checkpoint():
    sw = Stopwatch(max_laps=2)
    sw.start()
    sw.checkpoint(100, "warmup")
    for steps in (200, 300, 400):  # more than max_laps: the rate window drops old ones, the names keep theirs
        sw.checkpoint(steps)
    sw.checkpoint(500, "eval")
    sw.checkpoint(600, "eval", timer_name="_train")
    assert sw.get_checkpoint("warmup")[0] == 100 and sw.get_checkpoint("eval")[0] == 500
    assert sw.get_checkpoint("eval", timer_name="_train")[0] == 600
    assert sw.get_checkpoint("warmup")[1] <= sw.get_checkpoint("eval")[1] <= sw.get_elapsed()
    assert [steps for steps, _ in sw.get_summary()["checkpoints"]] == [300, 400, 500]
    assert sw.get_summary()["named_checkpoints"] == {
        "warmup": sw.get_checkpoint("warmup"),
        "eval": sw.get_checkpoint("eval"),
    }
    # The lap rate runs from the latest checkpoint, named or not: no steps since "eval" is a rate of 0.
    assert sw.get_lap_rate(500) == 0.0 and sw.get_lap_rate(1500) > 0
    restored = Stopwatch()
    restored.load_state(sw.save_state())
    assert restored.get_checkpoint("warmup") == sw.get_checkpoint("warmup")
    with pytest.raises(KeyError, match=r"timer 'global' has no checkpoint named 'eval2'; .*\['eval', 'warmup'\]"):
        sw.get_checkpoint("eval2")
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
