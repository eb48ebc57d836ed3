"""Curricula: multi-task, random, learning progress, bucketed, and building them from config paths."""

from __future__ import annotations

import pickle
import random
import textwrap
import time

import pytest

from metta.mettagrid.config import GameConfig, MettaGridConfig
from metta.mettagrid.config_loader import ConfigError
from metta.mettagrid.curriculum import (
    BucketedCurriculum,
    Curriculum,
    LearningProgressCurriculum,
    MultiTaskCurriculum,
    RandomCurriculum,
    SingleTaskCurriculum,
    curriculum_from_any,
    curriculum_from_config_path,
    expand_buckets,
)
from metta.mettagrid.map import RandomMap

BUCKETED = "/env/mettagrid/curriculum/navigation/bucketed"


def _nav_builders_available() -> bool:
    from typing import get_args

    from metta.mettagrid.map import MapBuilderConfig

    tags = set()
    for cls in get_args(get_args(MapBuilderConfig)[0]):
        tags.update(get_args(cls.model_fields["type"].annotation))
    return {"multi_room", "terrain"} <= tags


needs_nav_builders = pytest.mark.skipif(
    not _nav_builders_available(), reason="the multi_room and terrain map builders have not landed yet"
)


def env(num_agents: int = 2, max_steps: int = 100) -> MettaGridConfig:
    builder = RandomMap(width=8, height=8, agents=num_agents, objects={"altar": 1})
    return MettaGridConfig(game=GameConfig(num_agents=num_agents, max_steps=max_steps, map_builder=builder))


def small_bucketed(**kwargs) -> BucketedCurriculum:
    buckets = {
        "game.max_steps": {"values": [100, 200, 300]},
        "game.map_builder.objects.altar": {"range": [1, 8], "bins": 2},
    }
    return BucketedCurriculum(env_cfg_template=env(), buckets=buckets, **kwargs)


def draw_ids(curriculum: Curriculum, n: int) -> list[str]:
    return [curriculum.get_task().id for _ in range(n)]


# -- multi-task and random -----------------------------------------------------------------------------------


def test_multi_task_completion_rates_window():
    cur = MultiTaskCurriculum({"a": env(), "b": env()}, completion_moving_avg_window=4)
    for task_id in ["a", "a", "b", "a", "b", "b"]:
        cur.complete_task(task_id, 1.0)
    rates = cur.get_completion_rates()
    assert rates == {"task_completions/a": 0.25, "task_completions/b": 0.75}
    stats = cur.stats()
    assert stats["task_completions/b"] == 0.75 and stats["curriculum_task_probs/a"] == 0.5


def test_task_completion_reaches_parent_and_child():
    lp = LearningProgressCurriculum({"x": env(), "y": env()}, num_active_tasks=2)
    parent = MultiTaskCurriculum({"inner": lp, "other": env()})
    parent.seed(3)
    for _ in range(20):
        task = parent.get_task()
        task.complete(1.0)
    inner_done = sum(lp._completion_counts.values())
    assert inner_done == parent._completion_counts["inner"] > 0


def test_num_agents_must_match():
    with pytest.raises(ValueError, match="num_agents") as err:
        MultiTaskCurriculum({"two": env(2), "three": env(3)})
    assert "two: 2" in str(err.value) and "three: 3" in str(err.value)


def test_random_curriculum_weights():
    cur = RandomCurriculum({"a": env(), "b": env(), "c": env()}, task_weights={"a": 3.0, "b": 1.0})
    cur.seed(0)
    ids = draw_ids(cur, 4000)
    assert ids.count("c") == 0
    assert 0.7 < ids.count("a") / len(ids) < 0.8
    assert cur.get_task_probs() == {"a": 0.75, "b": 0.25, "c": 0.0}
    with pytest.raises(ValueError, match="unknown tasks"):
        RandomCurriculum({"a": env()}, task_weights={"z": 1.0})
    with pytest.raises(ValueError, match="positive"):
        RandomCurriculum({"a": env()}, task_weights={"a": 0.0})


def test_random_curriculum_upstream_path_to_weight_form():
    cur = RandomCurriculum(
        {"/env/mettagrid/curriculum/simple": 2, "/env/mettagrid/mettagrid": 0}, env_overrides={"game.num_agents": 4}
    )
    assert cur.get_task_probs() == {"/env/mettagrid/curriculum/simple": 1.0, "/env/mettagrid/mettagrid": 0.0}
    assert cur.get_task().env_cfg().game.num_agents == 4


# -- learning progress ---------------------------------------------------------------------------------------


def run_lp(cur: LearningProgressCurriculum, episodes: int, score_of, start: int = 0) -> list[str]:
    """Play ``episodes`` episodes; ``score_of(task_id, n_played_of_that_task, rng)`` gives the score."""
    played: dict[str, int] = {}
    noise = random.Random(1234 + start)
    ids = []
    for _ in range(episodes):
        task = cur.get_task()
        n = played.get(task.id, 0) + start
        played[task.id] = played.get(task.id, 0) + 1
        task.complete(score_of(task.id, n, noise))
        ids.append(task.id)
    return ids


def improving_score(task_id: str, n: int, noise: random.Random) -> float:
    if task_id == "learning":
        return 1.0 if noise.random() < min(n / 600.0, 1.0) else 0.0  # success rate climbs with practice
    if task_id == "solved":
        return 1.0
    if task_id == "hopeless":
        return 0.0
    return 0.5  # "flat": a constant half reward


def lp_curriculum(**kwargs) -> LearningProgressCurriculum:
    tasks = {name: env() for name in ("learning", "solved", "hopeless", "flat")}
    args = dict(ema_timescale=0.1, num_active_tasks=4, sample_threshold=5, rand_task_rate=0.25, memory=25)
    args.update(kwargs)
    return LearningProgressCurriculum(tasks, **args)


def test_learning_progress_favours_the_improving_task():
    cur = lp_curriculum()
    cur.seed(7)
    ids = run_lp(cur, 2000, improving_score)
    dist = cur.learning_progress_distribution()
    assert max(dist, key=dist.get) == "learning", dist
    assert dist["hopeless"] == 0.0  # no progress and no success: out of the distribution
    assert dist["solved"] > 0.0 and dist["flat"] > 0.0  # no progress, but some success: still in it
    late = ids[-1000:]
    assert late.count("learning") / len(late) > 0.35  # well above the uniform 0.25
    stats = cur.get_curriculum_stats()
    assert set(stats) >= {"lp/num_active_tasks", "lp/mean_sample_prob", "lp/num_zeros_lp_dist", "lp/task_success_rate"}
    assert stats["lp/num_zeros_lp_dist"] >= 1 and stats["lp/num_updates"] > 10
    assert abs(sum(cur.get_task_probs().values()) - 1.0) < 1e-9


def test_learning_progress_reweight_and_baseline():
    cur = lp_curriculum(progress_smoothing=0.05)
    import numpy as np

    p = np.linspace(0.0, 1.0, 11)
    w = cur._reweight(p)
    assert w[0] == 0.0 and w[-1] == 1.0 and np.all(np.diff(w) > 0)
    assert np.isclose(w[5], 0.5 * 0.95 / 0.5)  # p (1 - s) / (p + s (1 - 2p))
    assert w[1] > 0.5  # low rates are stretched up: progress near zero success counts most
    # A task at 100% from the start gets baseline 0.75 and normalized rate 1.
    for _ in range(5):
        cur.complete_task("solved", 1.0)
    cur._active = [cur._task_index["solved"]]
    cur._update_estimates()
    assert cur._baseline[cur._task_index["solved"]] == 0.75 and cur._p_fast[cur._task_index["solved"]] == 1.0


def test_learning_progress_is_deterministic_under_a_seed():
    a, b = lp_curriculum(), lp_curriculum()
    a.seed(11)
    b.seed(11)
    seq = run_lp(a, 600, improving_score)
    assert seq == run_lp(b, 600, improving_score)
    assert a.state_dict()["lp"] == b.state_dict()["lp"]
    c = lp_curriculum()
    c.seed(12)
    assert run_lp(c, 600, improving_score) != seq


def test_learning_progress_state_dict_round_trip():
    a = lp_curriculum()
    a.seed(5)
    run_lp(a, 700, improving_score)
    state = pickle.loads(pickle.dumps(a.state_dict()))  # as a checkpoint would store it
    b = lp_curriculum()
    b.seed(99)  # a different seed: the state must override everything
    b.load_state_dict(state)
    assert run_lp(a, 500, improving_score, start=1000) == run_lp(b, 500, improving_score, start=1000)
    assert a.learning_progress_distribution() == b.learning_progress_distribution()
    with pytest.raises(ValueError, match="task ids"):
        LearningProgressCurriculum({"other": env()}).load_state_dict(state)


def test_learning_progress_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rand_task_rate"):
        lp_curriculum(rand_task_rate=1.5)


# -- bucketed ------------------------------------------------------------------------------------------------


def test_expand_buckets_forms():
    b = expand_buckets(
        {
            "a.b": {"values": [1, 2]},
            "c": {"choice": ["x"]},
            "d": {"range": [2, 18], "bins": 4},
            "e": {"range": [0.0, 1.0], "bins": 2},
            "f": [5, [6, 7]],
            "g": 3,
        }
    )
    assert b["a.b"] == [("value", 1), ("value", 2)] and b["c"] == [("value", "x")]
    assert b["d"] == [("range", 2, 5, True), ("range", 6, 9, True), ("range", 10, 13, True), ("range", 14, 18, True)]
    assert b["e"] == [("range", 0.0, 0.5, False), ("range", 0.5, 1.0, False)]
    assert b["f"] == [("value", 5), ("choice", [6, 7])] and b["g"] == [("value", 3)]
    with pytest.raises(ValueError, match="bins"):
        expand_buckets({"d": {"range": [1, 3], "bins": 5}})
    with pytest.raises(ValueError, match="exactly one of"):
        expand_buckets({"d": {"values": [1], "range": [1, 2]}})


def test_bucketed_ids_and_sampling():
    cur = small_bucketed()
    assert len(cur.task_ids) == 6
    assert cur.task_ids[0] == "game.max_steps=100;map_builder.objects.altar=[1, 4];"
    cur.seed(0)
    seen = {}
    for _ in range(2000):
        task = cur.get_task()
        cfg = task.env_cfg()
        low, high = (1, 4) if "[1, 4]" in task.id else (5, 8)
        altars = cfg.game.map_builder.objects["altar"]
        assert low <= altars <= high and isinstance(altars, int)
        assert f"game.max_steps={cfg.game.max_steps};" in task.id
        seen.setdefault(task.id, set()).add(altars)
    assert set().union(*seen.values()) == set(range(1, 9))  # both ends of the integer range are reachable


def test_bucketed_float_ids_round_to_three_decimals():
    cur = BucketedCurriculum(env_cfg_template=env(), buckets={"game.agent.action_failure_penalty": [0.123456, 0.5]})
    assert cur.task_ids == ["game.agent.action_failure_penalty=0.123;", "game.agent.action_failure_penalty=0.5;"]


def test_bucketed_is_deterministic_and_pickles():
    a, b = small_bucketed(), small_bucketed()
    a.seed(3)
    b.seed(3)
    seq_a = [(t.id, t.env_cfg().game.map_builder.objects["altar"]) for t in (a.get_task() for _ in range(300))]
    seq_b = [(t.id, t.env_cfg().game.map_builder.objects["altar"]) for t in (b.get_task() for _ in range(300))]
    assert seq_a == seq_b
    clone = pickle.loads(pickle.dumps(a))
    assert [t.id for t in (clone.get_task() for _ in range(50))] == [t.id for t in (a.get_task() for _ in range(50))]


def test_bucketed_bad_key_fails_at_construction():
    with pytest.raises(ConfigError) as err:
        BucketedCurriculum(env_cfg_template=env(), buckets={"game.max_stepz": [1, 2]})
    assert "max_stepz" in str(err.value) and "max_steps" in str(err.value)


def test_bucketed_cache_makes_repeat_draws_fast():
    cur = small_bucketed(cache_size=64)
    cur.seed(0)
    for _ in range(500):
        cur.get_task()
    assert cur.cache_info["size"] <= 64
    n = 5000
    start = time.perf_counter()
    for _ in range(n):
        cur.get_task()
    per_draw = (time.perf_counter() - start) / n
    assert per_draw < 1e-3  # generous: a few microseconds here; a miss (validation) costs ~0.3 ms


def test_bucketed_lru_is_bounded():
    cur = BucketedCurriculum(
        env_cfg_template=env(), buckets={"game.max_steps": {"range": [1, 1000], "bins": 1}}, cache_size=8
    )
    cur.seed(0)
    for _ in range(100):
        cur.get_task()
    assert cur.cache_info == {"size": 8, "max_size": 8}


@needs_nav_builders
def test_navigation_bucketed_from_config_path():
    cur = curriculum_from_config_path(BUCKETED)
    assert isinstance(cur, BucketedCurriculum)
    assert len(cur.task_ids) == 64 and cur.num_agents == 4
    assert "map_builder.room.dir=varied_terrain/cylinder-world_small;room.objects.altar=[14, 18];" in cur.task_ids
    cur.seed(0)
    cfg = cur.get_task().env_cfg()
    assert cfg.game.map_builder.type == "multi_room" and 2 <= cfg.game.map_builder.room.objects["altar"] <= 18
    clone = pickle.loads(pickle.dumps(cur))
    assert clone.get_task().id == cur.get_task().id
    overridden = curriculum_from_config_path(BUCKETED, env_overrides={"game.max_steps": 50})
    assert overridden.get_task().env_cfg().game.max_steps == 50


# -- loading -------------------------------------------------------------------------------------------------


def test_env_config_path_becomes_single_task():
    cur = curriculum_from_config_path("/env/mettagrid/curriculum/simple", env_overrides={"game.max_steps": 42})
    assert isinstance(cur, SingleTaskCurriculum)
    assert cur.get_task().env_cfg().game.max_steps == 42


@needs_nav_builders
def test_learning_progress_yaml():
    cur = curriculum_from_config_path("/env/mettagrid/curriculum/navigation/learning_progress")
    assert isinstance(cur, LearningProgressCurriculum)
    assert cur.task_ids == ["terrain_maps_nohearts", "terrain_small", "terrain_medium", "terrain_large"]
    pickle.loads(pickle.dumps(cur))


def test_target_outside_the_package_is_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("_target_: os.system\ncommand: 'echo hi'\n")
    with pytest.raises(ConfigError, match="not allowed"):
        curriculum_from_config_path(path)
    path.write_text("_target_: metta.mettagrid.curriculum.core.Task\n")
    with pytest.raises(ConfigError, match="no Curriculum subclass"):
        curriculum_from_config_path(path)


def test_target_with_unknown_argument_names_it(tmp_path):
    path = tmp_path / "rand.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            _target_: metta.mettagrid.curriculum.multi_task.RandomCurriculum
            tasks: [/env/mettagrid/curriculum/simple]
            task_weigths: {a: 1}
            """
        )
    )
    with pytest.raises(ConfigError) as err:
        curriculum_from_config_path(path)
    assert "task_weigths" in str(err.value) and str(path) in str(err.value) and "task_weights" in str(err.value)


def test_curriculum_from_any():
    cur = SingleTaskCurriculum("t", env())
    assert curriculum_from_any(cur) is cur
    assert curriculum_from_any(env()).get_task().env_cfg().game.num_agents == 2
    assert curriculum_from_any({"game": {"max_steps": 9}}).get_task().env_cfg().game.max_steps == 9
    assert isinstance(curriculum_from_any("/env/mettagrid/curriculum/simple"), SingleTaskCurriculum)
    built = curriculum_from_any(
        {"_target_": "metta.mettagrid.curriculum.multi_task.RandomCurriculum", "tasks": {"a": env(), "b": env()}}
    )
    assert isinstance(built, RandomCurriculum)
    with pytest.raises(TypeError, match="expected"):
        curriculum_from_any(42)


def test_all_curricula_pickle():
    curricula = [
        MultiTaskCurriculum({"a": env(), "b": env()}),
        RandomCurriculum({"a": env(), "b": env()}, task_weights={"a": 1.0, "b": 2.0}),
        lp_curriculum(),
        small_bucketed(),
    ]
    for cur in curricula:
        cur.seed(1)
        clone = pickle.loads(pickle.dumps(cur))
        assert draw_ids(clone, 30) == draw_ids(cur, 30), type(cur).__name__
