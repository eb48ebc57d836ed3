"""Every run.py setting does what its name says: each key `python run.py --help` lists, set to a value other than
its default, changes something observable, and a key nobody checks fails this file.

Two kinds of check:

- run-level keys: a few real run.py processes, each setting many keys at once; every key has an observable of
  its own (a file, a log line from the real objects, a metrics column, the saved optimizer state), so one run
  answers for many keys without mixing them up;
- update keys (PPO, V-trace, prioritized replay, optimizer, learning-rate schedule, kickstarting): run.py hands
  the whole trainer config to ``train_ppo``; here one real rollout and update on a tiny env, from the same seeds,
  with the key changed against without, must end with other weights or other loss statistics.
"""

from __future__ import annotations

import base64
import copy
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "rl"))
from component_helpers import fresh_policy, tiny_config, tiny_vecenv  # noqa: E402

from metta.agent.policy_store import PolicyStore  # noqa: E402
from metta.common.config_cli import ConfigCliError, field_paths, help_text, parse_config  # noqa: E402
from metta.common.cpus import torch_threads_for  # noqa: E402
from metta.common.evaluation_db import EvaluationDB, database_path  # noqa: E402
from metta.rl.checkpoint import load_latest_checkpoint  # noqa: E402
from metta.rl.experience import make_experience  # noqa: E402
from metta.rl.functional_trainer import rollout, train_ppo  # noqa: E402
from metta.rl.kickstarter import Kickstarter  # noqa: E402
from metta.rl.losses import Losses  # noqa: E402
from metta.rl.optimizer import Optimizer, scheduled_learning_rate  # noqa: E402
from metta.rl.run_config import TrainingConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEYS = [key for key, *_ in field_paths(TrainingConfig)]


# ---------------------------------------------------------------------------------------------------------------
# The key list itself
def test_each_setting_is_listed_once_and_never_twice_under_two_names():
    assert len(KEYS) == len(set(KEYS))
    top = {k for k in KEYS if "." not in k}
    trainer_leaves = {k.rsplit(".", 1)[-1] for k in KEYS if k.startswith("trainer.")}
    assert not top & trainer_leaves, f"top-level keys that repeat a trainer key: {sorted(top & trainer_leaves)}"
    # run.py --help prints this text (tests/test_run_py.py::test_help_lists_keys runs it).
    fields = help_text(TrainingConfig, "run.py").split("Fields (key=value", 1)[1].splitlines()[1:]
    listed = [line.split("=", 1)[0].strip() for line in fields if line.startswith("  ") and "=" in line]
    assert sorted(listed) == sorted(KEYS)


@pytest.mark.parametrize(
    "key,why",
    [
        ("trainer._target_=x", "there is no trainer class to name"),
        ("trainer.env=/env/mettagrid/mettagrid", "pass an env config's path as curriculum"),
        ("trainer.hyperparameter_scheduler={}", "use lr_scheduler"),
        ("trainer.require_contiguous_env_ids=true", "always returns contiguous agent rows"),
        ("curriculum=/env/mettagrid/curriculum/simple", "trainer.curriculum"),
        ("num_workers=2", "trainer.num_workers"),
        ("run_dir=/tmp/x", "the run directory is {data_dir}/{experiment_name}"),
        ("agent.hidden_size=64", "agent is set as one value, e.g. agent={hidden_size: ...}"),
    ],
)
def test_removed_or_moved_keys_say_so(key, why):
    """(run.py turns this error into its exit message before any work: tests/test_run_py.py runs that path.)"""
    with pytest.raises(ConfigCliError, match=re.escape(why)):
        parse_config(TrainingConfig, [key])


# ---------------------------------------------------------------------------------------------------------------
# Run-level keys: real run.py processes
TINY = ["trainer.batch_size=2048", "trainer.minibatch_size=512", "trainer.bptt_horizon=8", "device=cpu"]


def start(data_dir: Path, name: str, *args: str, env: dict[str, str | None] | None = None) -> subprocess.Popen:
    """run.py in the background; its output goes to a file (a pipe nobody reads while another run is awaited
    could fill up and stall it)."""
    environ = {
        k: v for k, v in os.environ.items() if k not in ("METTA_RUN", "DATA_DIR", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    environ.update({"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})})
    environ = {k: v for k, v in environ.items() if v is not None}  # None: not set at all
    cmd = [sys.executable, "run.py", f"data_dir={data_dir}", f"run={name}", *args]
    log = open(data_dir / f"{name}.{len(list(data_dir.glob(f'{name}.*.log')))}.log", "w+")
    proc = subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    proc.wait(timeout=timeout)
    log = proc.log  # type: ignore[attr-defined]
    log.seek(0)
    out = log.read()
    log.close()
    assert proc.returncode == 0, out[-4000:]
    return out


def run(data_dir: Path, name: str, *args: str, env: dict[str, str | None] | None = None) -> str:
    return finish(start(data_dir, name, *args, env=env))


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """R0: the defaults at a tiny size; R1 and R2: many keys each (R1 beside R0, then R2 beside R1, one core
    each); R3: R0 resumed with compile on."""
    data = tmp_path_factory.mktemp("runs")
    out = {"data": data}
    r1 = start(
        data,
        "r1",
        "device=cpu",  # not the default where CUDA is; device=cuda without CUDA is an error (test_bad_input)
        "seed=7",
        "agent=interface_default",
        "num_envs=8",
        "vectorization=multiprocessing",
        "trainer.num_workers=2",
        "trainer.async_factor=2",
        "trainer.worker_timeout_s=45",
        "keep_checkpoints=1",
        "torch_threads=1",
        "debug_dump_weights=true",
        "trainer.total_timesteps=2048",
        "trainer.batch_size=1024",
        "trainer.minibatch_size=512",
        "trainer.max_minibatch_size=256",
        "trainer.bptt_horizon=16",
        "trainer.update_epochs=1",
        "trainer.zero_copy=false",
        "trainer.verbose=false",
        "trainer.cpu_offload=true",
        "trainer.env_overrides={game.max_steps: 37}",
        "trainer.grad_mean_variance_interval=1",
        "trainer.optimizer.learning_rate=0.002",
        "trainer.optimizer.beta1=0.8",
        "trainer.optimizer.beta2=0.99",
        "trainer.optimizer.eps=1e-6",
        "trainer.optimizer.weight_decay=0.01",
        "trainer.lr_scheduler.enabled=true",
        "trainer.lr_scheduler.schedule_type=linear",
        "trainer.lr_scheduler.warmup_steps=6000",
        "trainer.checkpoint.checkpoint_interval=2",
        "trainer.simulation.evaluate_interval=2",
        "trainer.simulation.suite=smoke",  # whole episodes of the terrain suite would cost minutes here
        "replay=false",  # R2's replay is the cheap one: this agent's forward pass is 5x the fast agent's
        "trainer.profiler.interval_epochs=1",
        f"trainer.profiler.profile_dir={data / 'r1_traces'}",
    )
    # R0 trains while R1 does (R2 starts from R0's policies, so it waits for R0).
    out["r0"] = run(
        data,
        "r0",
        *TINY,
        "trainer.total_timesteps=4096",
        "evaluate=false",
        "trainer.checkpoint.checkpoint_interval=1",
        "wandb.enabled=false",
        env={"WANDB_MODE": "offline", "WANDB_DIR": str(data / "r0_wandb")},
    )
    r0_checkpoints = data / "r0" / "checkpoints"
    r2 = start(
        data,
        "r2",
        "trainer.batch_size=1024",
        "trainer.minibatch_size=512",
        "trainer.bptt_horizon=8",
        "device=cpu",
        "trainer.total_timesteps=2048",
        "trainer.update_epochs=1",
        f"trainer.simulation.replay_dir={data / 'r2_replays'}",
        "trainer.curriculum=/env/mettagrid/curriculum/simple",
        "trainer.forward_pass_minibatch_target_size=32",
        "trainer.optimizer.type=muon",
        f"trainer.checkpoint.checkpoint_dir={data / 'r2_checkpoints'}",
        "trainer.checkpoint.checkpoint_interval=1",
        "trainer.checkpoint.wandb_checkpoint_interval=2",
        "trainer.simulation.evaluate_interval=2",
        "trainer.simulation.suite=smoke",
        "wandb.project=proj_r2",
        "wandb.entity=ent_r2",
        "wandb.tags=[tag_r2]",
        f"trainer.initial_policy.uri={r0_checkpoints}",
        "trainer.initial_policy.type=top",
        "trainer.initial_policy.metric=agent_step",
        "trainer.initial_policy.range=2",
        "trainer.initial_policy.filters={epoch: 2}",
        env={"WANDB_MODE": "offline", "WANDB_DIR": str(data / "r2_wandb"), "WANDB_SILENT": "true"},
    )
    out["r1"], out["r2"] = finish(r1), finish(r2)
    # A finished run resumed: nothing to train, so compiling costs nothing here (tests/device checks its outputs).
    out["r3"] = run(
        data,
        "r0",
        *TINY,
        "trainer.total_timesteps=4096",
        "evaluate=false",
        "trainer.checkpoint.checkpoint_interval=1",
        "trainer.compile=true",
        "trainer.compile_mode=default",
        env={"OMP_NUM_THREADS": None},  # unset: torch threads from the usable CPUs (check_torch_threads)
    )
    return out


def config_yaml(run_dir: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))


# One function per observable; RUN_CHECKS maps each key to the function that checks it.
def check_run_and_data_dir(runs):
    assert (runs["data"] / "r1" / "metrics.jsonl").is_file() and (runs["data"] / "r2" / "metrics.jsonl").is_file()


def check_device(runs):
    assert config_yaml(runs["data"] / "r1")["device"] == "cpu"


def check_seed(runs):
    assert config_yaml(runs["data"] / "r1")["env"]["seed"] == 7 and config_yaml(runs["data"] / "r0")["env"]["seed"] == 0
    # the episodes' own record of the seed they were drawn from
    assert {r["env_attributes/seed"] for r in rows(runs["data"] / "r1") if "env_attributes/seed" in r} == {7}


def check_agent(runs):
    assert "LSTM 1x512" in runs["r1"] and "LSTM 1x128" in runs["r0"]  # r0: the default agent, fast_cpu


def check_num_envs_and_workers(runs):
    env = config_yaml(runs["data"] / "r1")["env"]
    assert (env["num_envs"], env["agents"], env["num_workers"], env["async_factor"], env["vectorization"]) == (
        8,
        32,
        2,
        2,
        "multiprocessing",
    )
    assert env["agents_per_batch"] == 16  # half the envs per recv
    assert env["worker_timeout_s"] == 45 and config_yaml(runs["data"] / "r0")["env"]["worker_timeout_s"] == 60


def check_target_batch(runs):
    env0, env2 = config_yaml(runs["data"] / "r0")["env"], config_yaml(runs["data"] / "r2")["env"]
    assert env0["num_envs"] == 256 // 4 and env2["num_envs"] == 32 // 4  # forward_pass_minibatch_target_size / agents


def check_keep_checkpoints(runs):
    assert len(glob.glob(str(runs["data"] / "r1" / "checkpoints" / "model_*.pt"))) == 1
    assert len(glob.glob(str(runs["data"] / "r0" / "checkpoints" / "model_*.pt"))) == 2


def check_evaluate_and_replay(runs):
    assert not any(k.startswith("eval/") for r in rows(runs["data"] / "r0") for k in r)  # evaluate=false
    assert any("eval/smoke/score" in r for r in rows(runs["data"] / "r1"))  # evaluated ...
    assert "replay: file://" not in runs["r1"]  # ... without a replay (replay=false)
    replays = sorted(glob.glob(str(runs["data"] / "r2_replays" / "**" / "*.json.z"), recursive=True))
    assert replays  # replay_dir
    # Each replay has its viewer page beside it, and the log names the page as a file:// URL.
    pages = [Path(r[: -len(".json.z")] + ".html") for r in replays]
    assert all(p.is_file() for p in pages)
    assert re.findall(r"replay: (file://\S+)", runs["r2"]) == [p.resolve().as_uri() for p in pages]
    # The run report: written after each evaluation's row except the last one's, and once at the end.
    for name in ("r0", "r1", "r2"):
        log, last_epoch = runs[name], rows(runs["data"] / name)[-1]["epoch"]
        evaluated = [int(e) for e in re.findall(r"evaluation at epoch (\d+)", log)]
        reports = re.findall(r"run report: (file://\S+)", log)
        assert reports == [(runs["data"] / name / "index.html").resolve().as_uri()] * (
            sum(e != last_epoch for e in evaluated) + 1
        )
        assert log.rindex("run report: ") > max(log.rfind("evaluation at epoch"), log.rfind("replay: file://"))
    # R2's report links its pages in replay_dir, outside the run directory.
    report = (runs["data"] / "r2" / "index.html").read_text()
    assert all(f'href="../r2_replays/{p.relative_to(runs["data"] / "r2_replays").as_posix()}"' in report for p in pages)


def check_evaluation_suite_and_database(runs):
    # trainer.simulation.suite=smoke: the smoke suite's scores (the default, terrain, is tests/sim's); the episodes go
    # to {data_dir}/evaluations.sqlite, keyed by the checkpoint file of the evaluated epoch and the run.
    for name in ("r1", "r2"):
        evaluated = [r for r in rows(runs["data"] / name) if "eval/smoke/score" in r]
        assert [r["epoch"] for r in evaluated] == [2]
        assert {k for k in evaluated[0] if k.startswith("eval/")} == {
            "eval/smoke/open",
            "eval/smoke/wall",
            "eval/smoke/score",
        }
    with EvaluationDB(database_path(runs["data"])) as db:
        found = db.execute("SELECT policy_uri, policy_name, epoch, suite, sim, run_dir, complete FROM evaluations")
    checkpoints = {"r1": runs["data"] / "r1" / "checkpoints", "r2": runs["data"] / "r2_checkpoints"}
    for name, checkpoint_dir in checkpoints.items():
        mine = [e for e in found if e["policy_name"] == name]
        assert sorted((e["suite"], e["sim"], e["epoch"]) for e in mine) == [
            ("smoke", "smoke/open", 2),
            ("smoke", "smoke/wall", 2),
        ]
        assert all(e["policy_uri"] == f"file://{checkpoint_dir / 'model_0002.pt'}" for e in mine)
        assert all(e["run_dir"] == str(runs["data"] / name) and e["complete"] == 1 for e in mine)


def check_torch_threads(runs):
    assert "1 torch thread (set by torch_threads)" in runs["r1"]
    assert "1 torch thread (set by OMP_NUM_THREADS=1)" in runs["r0"]  # the environment's choice is kept
    threads, why = torch_threads_for(env_workers=0)  # r3 has neither: the usable CPUs, serial envs
    assert f"{threads} torch thread{'s' * (threads != 1)} ({why})" in runs["r3"]


def check_debug_dump_weights(runs):
    assert (runs["data"] / "r1" / "rank0_weights.pt").is_file() and not (
        runs["data"] / "r0" / "rank0_weights.pt"
    ).exists()


def check_sizes(runs):
    assert [r["agent_step"] for r in rows(runs["data"] / "r1")] == [1024, 2048]  # total_timesteps, batch_size
    assert "64 rows of 16 steps (1024 agent steps)" in runs["r1"]  # bptt_horizon
    assert "2 minibatches of 512 steps (2 accumulated pieces of 256)" in runs["r1"]  # minibatch, max_minibatch
    first = rows(runs["data"] / "r1")[0]
    assert first["parameters/minibatches"] == 4 and first["parameters/optimizer_steps"] == 2


def check_update_epochs(runs):
    assert [r["epoch"] for r in rows(runs["data"] / "r1")] == [1, 2]
    assert [r["epoch"] for r in rows(runs["data"] / "r0")] == [2, 4]


def check_zero_copy(runs):
    assert config_yaml(runs["data"] / "r1")["env"]["zero_copy"] is False


def check_verbose(runs):
    assert "epoch     1" not in runs["r1"] and "epoch     2" in runs["r0"]


def check_cpu_offload(runs):
    assert "(offloaded)" in runs["r1"] and "(offloaded)" not in runs["r0"]


def check_compile(runs):
    assert "policy compiled with torch.compile (mode default)" in runs["r3"]
    assert "torch.compile" not in runs["r0"]


def check_curriculum(runs):
    env0, env2 = config_yaml(runs["data"] / "r0")["env"], config_yaml(runs["data"] / "r2")["env"]
    assert (
        env2["curriculum"] == "/env/mettagrid/curriculum/simple" and env2["curriculum_type"] == "SingleTaskCurriculum"
    )
    assert env0["curriculum_type"] != "SingleTaskCurriculum"


def check_env_overrides(runs):
    # Episodes last at most game.max_steps = 37 steps (the first of each env is cut shorter at random, to spread
    # resets), so they end within the run's 64 steps per env; with the default 1000 none ends.
    lengths = [r["env_attributes/max_steps"] for r in rows(runs["data"] / "r1") if "env_attributes/max_steps" in r]
    assert lengths and max(lengths) <= 37
    assert not any("env_attributes/max_steps" in r for r in rows(runs["data"] / "r0"))


def check_grad_stats(runs):
    assert all({"grad/mean", "grad/variance", "grad/norm"} <= r.keys() for r in rows(runs["data"] / "r1"))
    assert not any("grad/mean" in r for r in rows(runs["data"] / "r0"))


def check_optimizer(runs):
    groups = load_latest_checkpoint(str(runs["data"] / "r1" / "checkpoints")).optimizer_state_dict["param_groups"][0]
    assert tuple(groups["betas"]) == (0.8, 0.99) and groups["eps"] == 1e-6 and groups["weight_decay"] == 0.01
    muon = load_latest_checkpoint(str(runs["data"] / "r2_checkpoints")).optimizer_state_dict
    adam = load_latest_checkpoint(str(runs["data"] / "r0" / "checkpoints")).optimizer_state_dict
    assert set(muon["param_groups"][0]) != set(adam["param_groups"][0])  # heavyball's Muon, not torch's Adam


def check_learning_rate_schedule(runs):
    from metta.rl.trainer_config import LRSchedulerConfig

    schedule = LRSchedulerConfig(enabled=True, schedule_type="linear", warmup_steps=6000)
    for row, start in zip(rows(runs["data"] / "r1"), (0, 1024)):
        expected = scheduled_learning_rate(0.002, schedule, start / 2048, start)
        assert row["parameters/learning_rate"] == pytest.approx(expected)
    assert rows(runs["data"] / "r1")[0]["parameters/learning_rate"] < 0.002 / 1000  # warm-up from ~0


def check_intervals(runs):
    assert [int(p[-7:-3]) for p in sorted(glob.glob(str(runs["data"] / "r2_checkpoints" / "model_*.pt")))] == [1, 2]
    assert [r["epoch"] for r in rows(runs["data"] / "r1") if "eval/smoke/score" in r] == [2]  # in its epoch's row
    assert runs["r1"].count("evaluation at epoch 2") == 1  # evaluate_interval 2, and the final one is not repeated
    assert not glob.glob(str(runs["data"] / "r2" / "checkpoints" / "*.pt"))  # checkpoint_dir


def check_wandb(runs):
    assert "policy uploaded to wandb" in runs["r2"]  # wandb_checkpoint_interval
    files = glob.glob(str(runs["data"] / "r2" / "**" / "*.wandb"), recursive=True)
    data = b"".join(Path(f).read_bytes() for f in files)
    assert b"model_0002" in data and b"proj_r2" in data and b"ent_r2" in data and b"tag_r2" in data
    # An artifact record's manifest holds each file's md5 (base64): the uploaded policy file itself was recorded.
    uploaded = [
        f
        for f in sorted((runs["data"] / "r2_checkpoints").glob("model_*.pt"))
        if base64.b64encode(hashlib.md5(f.read_bytes()).digest()) in data
    ]
    assert uploaded and all(int(f.stem.split("_")[1]) % 2 == 0 for f in uploaded)  # wandb_checkpoint_interval=2
    assert not glob.glob(str(runs["data"] / "r0" / "**" / "*.wandb"), recursive=True)  # wandb.enabled=false


def check_profiler(runs):
    assert sorted(os.listdir(runs["data"] / "r1_traces")) == ["trace_epoch_000001.json", "trace_epoch_000002.json"]
    assert not (runs["data"] / "r0" / "torch_traces").exists()


def check_initial_policy_range(runs):
    """range N draws the start, with the run's seed, from the N best: both of R0's two policies get drawn over
    seeds with range 2; range 1 is always the best."""
    from metta.rl.initial_policy import select_initial_policy
    from metta.rl.trainer_config import InitialPolicyConfig

    store = PolicyStore(checkpoint_dir=str(runs["data"] / "r0" / "checkpoints"))
    uri = str(runs["data"] / "r0" / "checkpoints")

    def drawn(range_: int) -> set[str]:
        cfg = InitialPolicyConfig(uri=uri, type="top", metric="agent_step", range=range_)
        return {Path(select_initial_policy(store, cfg, seed).file_path).name for seed in range(20)}

    assert drawn(1) == {"model_0004.pt"} and drawn(2) == {"model_0002.pt", "model_0004.pt"}

    # The other types: latest is the newest; specific needs one file; filters that match nothing are an error.
    def chosen(**kw) -> str:
        return Path(select_initial_policy(store, InitialPolicyConfig(**kw)).file_path).name

    assert chosen(uri=uri, type="latest") == "model_0004.pt"
    assert chosen(uri=uri, type="latest", filters={"epoch": 2}) == "model_0002.pt"
    assert chosen(uri=f"{uri}/model_0002.pt", type="specific") == "model_0002.pt"
    with pytest.raises(ValueError, match="type=specific needs uri to name one policy file; .* holds 2"):
        chosen(uri=uri, type="specific")
    with pytest.raises(ValueError, match=r"none of the 2 policies .* match filters=\{'epoch': 7\}"):
        chosen(uri=uri, type="top", filters={"epoch": 7})


def check_initial_policy(runs):
    # top by agent_step among 2 candidates, filtered to epoch 2: model_0002 (model_0004 has more steps)
    assert (
        f"starting from the initial policy file://{runs['data'] / 'r0' / 'checkpoints' / 'model_0002.pt'}" in runs["r2"]
    )


RUN_CHECKS = {
    "experiment_name": check_run_and_data_dir,
    "data_dir": check_run_and_data_dir,
    "device": check_device,
    "seed": check_seed,
    "agent": check_agent,
    "num_envs": check_num_envs_and_workers,
    "vectorization": check_num_envs_and_workers,
    "trainer.worker_timeout_s": check_num_envs_and_workers,
    "keep_checkpoints": check_keep_checkpoints,
    "evaluate": check_evaluate_and_replay,
    "replay": check_evaluate_and_replay,
    "torch_threads": check_torch_threads,
    "debug_dump_weights": check_debug_dump_weights,
    "trainer.total_timesteps": check_sizes,
    "trainer.batch_size": check_sizes,
    "trainer.minibatch_size": check_sizes,
    "trainer.max_minibatch_size": check_sizes,
    "trainer.bptt_horizon": check_sizes,
    "trainer.update_epochs": check_update_epochs,
    "trainer.zero_copy": check_zero_copy,
    "trainer.verbose": check_verbose,
    "trainer.cpu_offload": check_cpu_offload,
    "trainer.compile": check_compile,
    "trainer.compile_mode": check_compile,
    "trainer.forward_pass_minibatch_target_size": check_target_batch,
    "trainer.async_factor": check_num_envs_and_workers,
    "trainer.num_workers": check_num_envs_and_workers,
    "trainer.curriculum": check_curriculum,
    "trainer.env_overrides": check_env_overrides,
    "trainer.grad_mean_variance_interval": check_grad_stats,
    "trainer.optimizer.type": check_optimizer,
    "trainer.optimizer.beta1": check_optimizer,
    "trainer.optimizer.beta2": check_optimizer,
    "trainer.optimizer.eps": check_optimizer,
    "trainer.optimizer.weight_decay": check_optimizer,
    "trainer.optimizer.learning_rate": check_learning_rate_schedule,
    "trainer.lr_scheduler.enabled": check_learning_rate_schedule,
    "trainer.lr_scheduler.schedule_type": check_learning_rate_schedule,
    "trainer.lr_scheduler.warmup_steps": check_learning_rate_schedule,
    "trainer.initial_policy.uri": check_initial_policy,
    "trainer.initial_policy.type": check_initial_policy,
    "trainer.initial_policy.range": check_initial_policy_range,
    "trainer.initial_policy.metric": check_initial_policy,
    "trainer.initial_policy.filters": check_initial_policy,
    "trainer.checkpoint.checkpoint_interval": check_intervals,
    "trainer.checkpoint.checkpoint_dir": check_intervals,
    "trainer.checkpoint.wandb_checkpoint_interval": check_wandb,
    "trainer.simulation.evaluate_interval": check_intervals,
    "trainer.simulation.replay_dir": check_evaluate_and_replay,
    "trainer.simulation.suite": check_evaluation_suite_and_database,
    "trainer.profiler.interval_epochs": check_profiler,
    "trainer.profiler.profile_dir": check_profiler,
    "wandb.enabled": check_wandb,
    "wandb.project": check_wandb,
    "wandb.entity": check_wandb,
    "wandb.tags": check_wandb,
}
# Checked elsewhere: under torchrun with two ranks, on a run directory whose checkpoints are all corrupt and on a
# stopped run's evaluation (tests/reliability/test_stop_and_resume.py), and the two CUDA
# settings, which do nothing on a CPU: tf32 sets torch's switches (tests/rl/test_trainer_config.py), cuda_graphs
# captures the rollout step (tests/device on CUDA; its eager form in tests/rl/test_rollout_training.py).
ELSEWHERE = {
    "trainer.scale_batches_by_world_size",
    "restart_if_unloadable",
    "trainer.tf32",
    "trainer.cuda_graphs",
    "trainer.simulation.evaluate_on_stop_s",
}


@pytest.mark.parametrize("check", sorted(set(RUN_CHECKS.values()), key=lambda f: f.__name__), ids=lambda f: f.__name__)
def test_run_level_key(runs, check):
    check(runs)


# ---------------------------------------------------------------------------------------------------------------
# Update keys: one rollout and update on a tiny env, key changed against not
_ROLLOUTS: dict[tuple, tuple] = {}


def rolled_out(cfg) -> tuple:
    """``(experience, agent_step)`` after one rollout of the initial policy: the same data for every key (none of
    the update keys changes the rollout), made once per buffer layout and copied for each update."""
    layout = (cfg.batch_size, cfg.minibatch_size, cfg.max_minibatch_size, cfg.bptt_horizon)
    if layout not in _ROLLOUTS:
        policy = fresh_policy()
        env = tiny_vecenv()
        torch.manual_seed(0)  # after building: the first fresh_policy() call draws the initial weights
        try:
            experience = make_experience(env, policy, cfg, "cpu")
            _ROLLOUTS[layout] = (experience, rollout(policy, env, experience, "cpu", 500)[0])
        finally:
            env.close()
    experience, agent_step = _ROLLOUTS[layout]
    return copy.deepcopy(experience), agent_step


def update(overrides: dict, tmp: Path | None = None) -> tuple[torch.Tensor, dict]:
    """Weights and loss statistics after one update of the initial policy on one rollout (64 agent steps)."""
    # lr 0.01 so that one update moves the policy far enough for clipping and V-trace to matter; the batch
    # starts at step 500 of 2000, a quarter of the way.
    cfg = tiny_config(
        **{"total_timesteps": 2000, "update_epochs": 2, "optimizer": {"learning_rate": 0.01}, **overrides}
    )
    experience, agent_step = rolled_out(cfg)
    policy = fresh_policy()
    optimizer = Optimizer.from_config(policy, cfg)
    kickstarter = None
    if cfg.kickstart.teacher_uri:
        env = tiny_vecenv()
        store = PolicyStore({"device": "cpu", "trainer": {"checkpoint": {"checkpoint_dir": str(tmp or ".")}}})
        kickstarter = Kickstarter(cfg.kickstart, "cpu", store, env)
        env.close()
    losses = Losses()
    torch.manual_seed(1)
    train_ppo(policy, optimizer, experience, "cpu", losses, 0, cfg, kickstarter, agent_step, batch_start_step=500)
    return torch.cat([p.detach().flatten() for p in policy.parameters()]), losses.stats()


UPDATE_KEYS = {
    # key: (baseline overrides, changed overrides)
    "trainer.ppo.clip_coef": ({}, {"ppo": {"clip_coef": 0.01}}),
    "trainer.ppo.ent_coef": ({}, {"ppo": {"ent_coef": 0.5}}),
    "trainer.ppo.gae_lambda": ({}, {"ppo": {"gae_lambda": 0.5}}),
    "trainer.ppo.gamma": ({}, {"ppo": {"gamma": 0.5}}),
    "trainer.ppo.max_grad_norm": ({}, {"ppo": {"max_grad_norm": 1e-4}}),
    "trainer.ppo.vf_clip_coef": ({}, {"ppo": {"vf_clip_coef": 1e-4}}),
    "trainer.ppo.vf_coef": ({}, {"ppo": {"vf_coef": 3.0}}),
    "trainer.ppo.l2_reg_loss_coef": ({}, {"ppo": {"l2_reg_loss_coef": 0.1}}),
    "trainer.ppo.l2_init_loss_coef": ({}, {"ppo": {"l2_init_loss_coef": 10.0}}),
    "trainer.ppo.norm_adv": ({}, {"ppo": {"norm_adv": False}}),
    # (a tight value clip, so that the clipped term is the larger one and turning it off shows)
    "trainer.ppo.clip_vloss": ({"ppo": {"vf_clip_coef": 1e-4}}, {"ppo": {"vf_clip_coef": 1e-4, "clip_vloss": False}}),
    "trainer.ppo.target_kl": ({}, {"ppo": {"target_kl": 1e-12}}),
    "trainer.vtrace.vtrace_rho_clip": ({}, {"vtrace": {"vtrace_rho_clip": 0.5}}),
    "trainer.vtrace.vtrace_c_clip": ({}, {"vtrace": {"vtrace_c_clip": 0.5}}),
    "trainer.prioritized_experience_replay.prio_alpha": ({}, {"prioritized_experience_replay": {"prio_alpha": 1.0}}),
    "trainer.prioritized_experience_replay.prio_beta0": (
        {"prioritized_experience_replay": {"prio_alpha": 1.0}},
        {"prioritized_experience_replay": {"prio_alpha": 1.0, "prio_beta0": 0.1}},
    ),
    "trainer.lr_scheduler.anneal_lr": (
        {"lr_scheduler": {"enabled": True}},
        {"lr_scheduler": {"enabled": True, "anneal_lr": True}},
    ),
}
KICKSTART_KEYS = {
    "trainer.kickstart.teacher_uri": ({}, {}),
    "trainer.kickstart.action_loss_coef": ({}, {"action_loss_coef": 0.1}),
    "trainer.kickstart.value_loss_coef": ({}, {"value_loss_coef": 0.1}),
    "trainer.kickstart.anneal_ratio": ({"kickstart_steps": 800}, {"kickstart_steps": 800, "anneal_ratio": 0.01}),
    "trainer.kickstart.kickstart_steps": ({}, {"kickstart_steps": 10}),
    "trainer.kickstart.additional_teachers": ({}, {"additional_teachers": "second"}),
}


@pytest.fixture(scope="module")
def baseline():
    return update({})


@pytest.mark.parametrize("key", sorted(UPDATE_KEYS))
def test_update_key(key, baseline):
    base_overrides, changed = UPDATE_KEYS[key]
    before = update(base_overrides) if base_overrides else baseline
    after = update(changed)
    assert not torch.allclose(before[0], after[0]), f"{key} changed nothing in the update"


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two saved policies of the tiny env, as kickstart teachers."""
    from metta.agent.metta_agent import make_policy

    folder = tmp_path_factory.mktemp("teachers")
    store = PolicyStore({"device": "cpu", "trainer": {"checkpoint": {"checkpoint_dir": str(folder)}}})
    env = tiny_vecenv()
    paths = []
    for seed in (5, 6):
        torch.manual_seed(seed)
        record = store.create_empty_policy_record(f"teacher_{seed}.pt")
        record.policy = make_policy(env)
        paths.append(store.save(record).file_path)
    env.close()
    return paths


@pytest.mark.parametrize("key", sorted(KICKSTART_KEYS))
def test_kickstart_key(key, teachers, baseline, tmp_path):
    base_ks, changed_ks = KICKSTART_KEYS[key]

    def kick(extra: dict) -> dict:
        extra = dict(extra)
        if extra.get("additional_teachers") == "second":
            extra["additional_teachers"] = [{"teacher_uri": teachers[1]}]
        return {"kickstart": {"teacher_uri": teachers[0], **extra}}

    before = baseline if key == "trainer.kickstart.teacher_uri" else update(kick(base_ks), tmp=tmp_path)
    after = update(kick(changed_ks), tmp=tmp_path)
    assert before[1]["ks_action_loss"] != after[1]["ks_action_loss"], f"{key} changed nothing in the teacher losses"


def test_gradient_accumulation_gives_the_weights_of_one_large_minibatch():
    """max_minibatch_size splits each minibatch into pieces whose gradients add up before one optimizer step: the
    same update, up to float rounding (advantage normalization is per piece, so it is off here)."""
    whole = update({"minibatch_size": 32, "update_epochs": 1, "ppo": {"norm_adv": False}})
    pieces = update({"minibatch_size": 32, "update_epochs": 1, "max_minibatch_size": 16, "ppo": {"norm_adv": False}})
    torch.testing.assert_close(pieces[0], whole[0], rtol=1e-4, atol=1e-5)
    assert pieces[1]["policy_loss"] == pytest.approx(whole[1]["policy_loss"], rel=1e-4, abs=1e-7)


# ---------------------------------------------------------------------------------------------------------------
def test_every_key_is_checked():
    checked = set(RUN_CHECKS) | set(UPDATE_KEYS) | set(KICKSTART_KEYS) | ELSEWHERE
    assert sorted(set(KEYS) - checked) == [], "keys no test sets"
    assert sorted(checked - set(KEYS)) == [], "checks of keys run.py does not have"
