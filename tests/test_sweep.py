"""Sweeps (metta.sweep): real worker processes, real run.py trials at tiny sizes, a real SIGKILL, headless Chromium.

Two small studies carry the end-to-end tests:
- ``shared``: two workers join one study of 3 timed trials (about two epochs each); the objective is
  ``parameters/learning_rate``, which each trial logs unchanged every epoch, so which trial wins and which one
  the median pruner stops does not depend on learning or timing;
- ``killed``: one worker is SIGKILLed in the middle of its only trial; the same command run again resumes
  that trial's run directory and finishes it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from metta.common.run_report import read_metrics
from metta.sweep import SpecError, SweepWorker, load_spec, open_storage
from metta.sweep.__main__ import main
from metta.sweep.progress import objective_reports, row_progress, training_seconds
from metta.sweep.spec import TrialBudget

REPO = Path(__file__).resolve().parents[1]
LR = "trainer.optimizer.learning_rate"
TINY = {  # one epoch: 4 envs x 4 agents x 64 steps = 1024 agent steps, as in tests/test_run_py.py
    "device": "cpu",
    "num_envs": 4,
    "evaluate": False,
    "torch_threads": 1,
    "trainer.batch_size": 1024,
    "trainer.minibatch_size": 256,
    "trainer.bptt_horizon": 8,
    "trainer.update_epochs": 1,
    "trainer.checkpoint.checkpoint_interval": 1,
}


def write_spec(path: Path, data_dir: Path, **fields) -> Path:
    spec = {
        "data_dir": str(data_dir),
        "trials": 1,
        "trial": {"agent_steps": 2048, "reports": 2},
        "objective": {"metric": "parameters/learning_rate"},
        "base": dict(TINY),
        "params": {LR: {"type": "log", "low": 1e-4, "high": 1e-2}},
    }
    spec.update(fields)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def start_worker(spec: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "metta.sweep", str(spec)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def wait_for(condition, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def finish(process: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    process.wait(timeout=timeout)
    out = log.read_text()
    assert process.returncode == 0, f"sweep worker exited {process.returncode}:\n{out[-4000:]}"
    return out


def load_trials(spec_path: Path) -> list[optuna.trial.FrozenTrial]:
    spec = load_spec(spec_path)
    study = optuna.load_study(study_name=spec.name, storage=open_storage(None, spec.sweep_dir()))
    return study.get_trials()


def epochs(run_dir: Path) -> list[int]:
    return [row["epoch"] for row in read_metrics(run_dir)[0]]


# ------------------------------------------------------------------------------------------------------------
# A bad spec is an error naming the key, before any trial
@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            {"params": {"trainer.learning_rate": {"type": "log", "low": 1e-4, "high": 1e-2}}},
            "params.trainer.learning_rate",
        ),
        (
            {"params": {"trainer.ppo.gamma": {"type": "uniform", "low": 0.9, "high": 1.5}}},
            "params.trainer.ppo.gamma at 1.5",
        ),
        ({"params": {LR: {"type": "log", "low": 0, "high": 1e-2}}}, f"params.{LR}.low=0"),
        ({"params": {LR: {"type": "gaussian", "low": 0, "high": 1}}}, f"params.{LR}"),
        ({"trial": {"reports": 3}}, "trial: Value error, give exactly one of agent_steps and minutes"),
        ({"base": {**TINY, "run": "mine"}}, "base.run: set by the sweep"),
        ({"base": {**TINY, "trainer.total_timesteps": 5000}}, "base.trainer.total_timesteps"),
        ({"base": {**TINY, "trainer.batch_size": "big"}}, "trainer.batch_size='big'"),
        ({"objective": {"metric": "eval/navigation/score"}}, "objective.metric='eval/navigation/score'"),
        ({"enqueue": [{LR: 0.5}]}, f"enqueue[0].{LR}=0.5"),
        ({"pruner": {"type": "median", "n_startup": 3}}, "pruner.n_startup"),
    ],
)
def test_bad_spec_is_an_error_naming_the_key(tmp_path, change, named):
    path = write_spec(tmp_path / "bad.yaml", tmp_path / "data", **change)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert named in str(err.value) and str(path) in str(err.value)


def test_the_command_refuses_a_bad_spec_before_any_trial(tmp_path, capsys):
    path = write_spec(
        tmp_path / "bad.yaml", tmp_path / "data", params={"trainer.ppo.gama": {"type": "uniform", "low": 0, "high": 1}}
    )
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "params.trainer.ppo.gama" in err and "did you mean gamma" in err
    assert not (tmp_path / "data").exists()  # no study, no trial folder


# ------------------------------------------------------------------------------------------------------------
# From metrics rows to reports
def test_reports_are_the_mean_of_each_part_of_the_budget():
    rows = [{"epoch": e, "agent_step": 1024 * e, "time": 2.0 * e, "overview/reward": float(e)} for e in range(1, 5)]
    budget = TrialBudget(agent_steps=4096, reports=2)
    progress = row_progress(rows, budget)
    assert progress == [0.25, 0.5, 0.75, 1.0]
    done = objective_reports(rows, progress, "overview/reward", 2)
    assert done.complete == {1: 1.5, 2: 3.5} and done.latest == (2, 3.5)
    running = objective_reports(rows[:3], progress[:3], "overview/reward", 2)
    assert running.complete == {1: 1.5} and running.latest == (2, 3.0)  # part 2 is not over yet

    # An eval/ score is in the rows of the evaluations only: a part without one carries the last score.
    evals = [{**row, "eval/navigation/score": float(row["epoch"])} if row["epoch"] % 2 == 0 else row for row in rows]
    scores = objective_reports(evals, progress, "eval/navigation/score", 4)
    assert scores.complete == {2: 2.0, 3: 2.0, 4: 4.0}

    # A timed budget: the clock of metrics.jsonl, which starts again when a run resumes (rows 4-5 here).
    times = [10, 20, 30, 5, 15]
    timed = [{"epoch": i + 1, "agent_step": 1024 * (i + 1), "time": t} for i, t in enumerate(times)]
    assert training_seconds(timed) == [10, 20, 30, 35, 45]
    assert row_progress(timed, TrialBudget(minutes=0.5)) == pytest.approx([1 / 3, 2 / 3, 1.0, 35 / 30, 1.5])


# ------------------------------------------------------------------------------------------------------------
# Two workers share one study
@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    choices = [0.001, 0.002, 1e-05]
    spec = write_spec(
        root / "shared.yaml",
        root / "data",
        trials=3,
        trial={"minutes": 0.03, "reports": 2},  # 1.8 s of training, then SIGTERM
        base={**TINY, "trainer.total_timesteps": 1_000_000},
        params={LR: {"type": "categorical", "choices": choices}},
        enqueue=[{LR: lr} for lr in choices],
        pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    )
    sweep_dir = root / "data" / "sweeps" / "shared"
    first = start_worker(spec, root / "first.log")
    wait_for(lambda: (sweep_dir / "trial_0000" / "train.log").exists(), "the first worker's first trial")
    second = start_worker(spec, root / "second.log")
    logs = [finish(first, root / "first.log"), finish(second, root / "second.log")]
    return spec, sweep_dir, logs


def test_two_workers_share_one_study_and_run_each_trial_once(shared):
    spec, sweep_dir, logs = shared
    trials = load_trials(spec)
    assert [(t.number, t.state, t.params[LR]) for t in trials] == [
        (0, TrialState.COMPLETE, 0.001),
        (1, TrialState.COMPLETE, 0.002),
        (2, TrialState.PRUNED, 1e-05),  # below the median of the finished trials at its first report
    ]
    assert [t.value for t in trials[:2]] == [0.001, 0.002]
    assert trials[0].user_attrs["worker"] != trials[1].user_attrs["worker"]  # one trial each, at the same time
    assert sorted(p.name for p in sweep_dir.glob("trial_*")) == ["trial_0000", "trial_0001", "trial_0002"]
    for t in trials:
        run_dir = sweep_dir / t.user_attrs["run_dir"]
        log = (run_dir / "train.log").read_text()
        assert log.count(f"sweep shared, trial {t.number}:") == 1  # run.py started once for each trial
        assert "stopped by SIGTERM" in log  # its time was up, or it was pruned
        found = epochs(run_dir)
        assert found == list(range(1, len(found) + 1)) and found
    for t in trials[:2]:  # each trained its 1.8 s (metrics.jsonl's clock) before the SIGTERM
        assert training_seconds(read_metrics(sweep_dir / t.user_attrs["run_dir"])[0])[-1] >= 0.03 * 60
        assert max(t.intermediate_values) == 2  # the last part (part 1 has no row when the first epoch outlasts it)
    out = "".join(logs)
    assert "trial 2 (3 of 3)" in out and "best so far: trial 1, parameters/learning_rate 0.002" in out
    assert re.search(r"trial 2: pruned at report \d/2", out)


def test_a_worker_with_another_spec_cannot_join(shared, tmp_path):
    spec_path, _, _ = shared
    data = yaml.safe_load(spec_path.read_text())
    data["params"][LR]["choices"].append(0.003)
    other = tmp_path / "shared.yaml"  # same name, so the same study
    other.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="created from another spec .*differs in params"):
        SweepWorker(load_spec(other))


def test_sweep_report_in_a_browser(shared, browser):
    spec_path, sweep_dir, _ = shared
    page = browser.open((sweep_dir / "index.html").resolve().as_uri())
    browser.pump(0.2)
    assert page.console_errors == []
    rows = page.evaluate(
        "[...document.querySelectorAll('table.trials tr[data-trial]')].map(r => [r.dataset.trial, r.dataset.state])"
    )
    assert rows == [["1", "complete"], ["0", "complete"], ["2", "pruned"]]  # sorted by the objective, best first
    assert page.evaluate("document.querySelector('tr.best').dataset.trial") == "1"
    markers = page.evaluate(
        """[...document.querySelectorAll('svg[data-metric="objective"] circle.marker')].map(c => c.dataset.label)"""
    )
    assert sorted(markers) == ["complete", "complete", "pruned"]
    assert page.evaluate("document.querySelectorAll('table.importance tr').length") == 2  # a header, one parameter
    assert f"{LR}=0.002" in page.evaluate("document.querySelector('pre.command').textContent")
    href = page.evaluate("document.querySelector('tr.best a[href$=\"index.html\"]').href")
    run_page = browser.open(href)  # the trial's own run report
    assert run_page.evaluate("document.title") == "run trial_0001"


# ------------------------------------------------------------------------------------------------------------
# A killed sweep resumes
def test_a_killed_sweep_resumes_its_trial_run(tmp_path):
    spec = write_spec(
        tmp_path / "killed.yaml",
        tmp_path / "data",
        trial={"agent_steps": 4096, "reports": 2},
        pruner={"type": "none"},
        worker_timeout_s=2,
    )
    run_dir = tmp_path / "data" / "sweeps" / "killed" / "trial_0000"
    worker = start_worker(spec, tmp_path / "first.log")
    wait_for(lambda: len(epochs(run_dir)) >= 1, "the trial's first epoch")
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    out = finish(start_worker(spec, tmp_path / "again.log"), tmp_path / "again.log")

    lost, retry = load_trials(spec)
    assert lost.state == TrialState.FAIL and "worker lost" in lost.user_attrs["error"]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert retry.user_attrs["run_dir"] == "trial_0000" and retry.user_attrs["retry_of"] == 0
    assert retry.value == pytest.approx(lost.params[LR]) and sorted(retry.intermediate_values) == [1, 2]
    assert not (run_dir.parent / "trial_0001").exists()
    # The run went on from its checkpoint: every epoch once, and the log of the second run.py says so.
    assert epochs(run_dir) == [1, 2, 3, 4]
    assert [row["agent_step"] for row in read_metrics(run_dir)[0]] == [1024, 2048, 3072, 4096]
    log = (run_dir / "train.log").read_text()
    assert "resumed from" in log and log.count("sweep killed, trial") == 2
    assert "resuming trial_0000" in out and "1 of 1 trials finished" in out
    # The first run.py ended with its worker (SIGTERM from the kernel): it saved a checkpoint and exited.
    assert "received SIGTERM" in log
