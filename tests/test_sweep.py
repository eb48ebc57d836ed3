"""Sweeps (metta.sweep): real workers, real run.py trials at tiny sizes, real SIGKILL and SIGTERM, headless Chromium.

Two small studies carry the end-to-end tests (each run.py start costs ~6 CPU seconds, so there are few):
- ``shared``: a worker in this process and a worker process join one study of 3 trials of 3 epochs; the
  second worker is SIGKILLed in the middle of its trial, and the first one finds that trial lost and resumes its
  run. The objective is ``parameters/learning_rate``, which each trial logs unchanged every epoch, so which trial
  wins and which one the median pruner stops does not depend on learning or timing;
- a timed trial whose worker is stopped by SIGTERM, and the worker started again, which finishes it.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from metta.common.config_cli import ConfigCliError
from metta.common.run_report import read_metrics
from metta.sweep import SpecError, SweepWorker, load_spec, open_storage
from metta.sweep.__main__ import main
from metta.sweep.progress import objective_reports, row_progress, training_seconds
from metta.sweep.spec import TrialBudget
from metta.sweep.worker import HEARTBEAT

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


def signal_when_trained(run_dir: Path, epochs: int, sig: signal.Signals, pid: int) -> subprocess.Popen:
    """A watcher process that sends ``sig`` to ``pid`` once ``run_dir`` has logged ``epochs`` epochs (a thread in
    this process would make the workers' fork-then-exec of run.py unsafe)."""
    script = f"""until [ "$(wc -l < {run_dir}/metrics.jsonl 2>/dev/null || echo 0)" -ge {epochs} ]; do sleep 0.1; done
kill -{sig.name[3:]} {pid}"""
    return subprocess.Popen(["bash", "-c", script])


def run_worker(spec: Path) -> tuple[int, str]:
    """A sweep worker in this process (no second start of torch and run.py's imports): exit code, console."""
    out = io.StringIO()
    code = SweepWorker(load_spec(spec), out=out).run()
    return code, out.getvalue()


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
        ({"base": {**TINY, "experiment_name": "mine"}}, "base.experiment_name: set by the sweep"),
        ({"base": {**TINY, "trainer.total_timesteps": 5000}}, "base.trainer.total_timesteps"),
        ({"base": {**TINY, "trainer.batch_size": "big"}}, "trainer.batch_size='big'"),
        ({"objective": {"metric": "eval/navigation/score"}}, "objective.metric='eval/navigation/score'"),
        (
            {"objective": {"metric": "eval/navigation/score"}, "trial": {"minutes": 5}, "base": {"device": "cpu"}},
            "set base.trainer.simulation.evaluate_interval",
        ),
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


def test_trial_args_place_the_evaluations_and_refuse_values_that_only_fail_together(tmp_path):
    left_out = ("evaluate", "trainer.batch_size", "trainer.minibatch_size", "trainer.checkpoint.checkpoint_interval")
    path = write_spec(
        tmp_path / "eval.yaml",
        tmp_path / "data",
        trial={"agent_steps": 8 * 1024, "reports": 4},
        objective={"metric": "eval/navigation/score"},
        base={k: v for k, v in TINY.items() if k not in left_out},
        # Each value fits with some value of the other parameter, so the spec is valid; not every pair fits.
        params={
            "trainer.batch_size": {"type": "categorical", "choices": [1024, 4096]},
            "trainer.minibatch_size": {"type": "categorical", "choices": [256, 2048]},
        },
    )
    spec = load_spec(path)
    args, config = spec.trial_args("trial_0000", tmp_path, {"trainer.batch_size": 1024, "trainer.minibatch_size": 256})
    # 8 epochs of 1024 agent steps in 4 reports: an evaluation every 2 epochs, a checkpoint at least as often.
    assert "trainer.simulation.evaluate_interval=2" in args and "trainer.checkpoint.checkpoint_interval=2" in args
    assert config["experiment_name"] == "trial_0000" and config["trainer"]["simulation"]["evaluate_interval"] == 2
    with pytest.raises(ConfigCliError, match="minibatch_size=2048 is larger than batch_size=1024"):
        spec.trial_args("trial_0001", tmp_path, {"trainer.batch_size": 1024, "trainer.minibatch_size": 2048})


def test_workers_on_a_journal_file_join_one_study_and_retry_a_lost_trial(tmp_path):
    """Two workers on one journal file (``--storage journal://PATH``): the trial of a worker that stopped
    heartbeating is failed by the other and enqueued again with its values and run directory, and no worker
    starts more trials than the study has."""
    spec = load_spec(write_spec(tmp_path / "journal.yaml", tmp_path / "data", worker_timeout_s=30))
    url = f"journal://{tmp_path / 'shared' / 'study.log'}"
    first, second = SweepWorker(spec, storage_url=url), SweepWorker(spec, storage_url=url)
    trial = first.study.ask()
    values = spec.suggest(trial)
    trial.set_user_attr("run_dir", "trial_0000")
    trial_id = first._trial_id(trial.number)
    second.fail_lost_trials()  # just started: not lost
    assert [t.state for t in second.study.get_trials()] == [TrialState.RUNNING]
    first.storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time() - 31)  # its last heartbeat, 31 s ago
    second.fail_lost_trials()
    first.fail_lost_trials()  # a second worker looking finds nothing more to do
    lost, retry = second.study.get_trials()
    assert lost.state == TrialState.FAIL and "no heartbeat for 31 s" in lost.user_attrs["error"]
    assert retry.state == TrialState.WAITING and retry.params == values
    assert retry.user_attrs == {"run_dir": "trial_0000", "retry_of": 0}
    # The retry is the study's one trial; a trial asked for beside it (two workers at once) is not run.
    assert second.study.ask().number == retry.number and not second._surplus(retry.number)
    extra = first.study.ask()
    assert first._surplus(extra.number)
    assert second.study.get_trials()[-1].state == TrialState.FAIL


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

    # A timed budget: the clock of metrics.jsonl, which goes on across resumes.
    times = [10, 20, 30, 35, 45]
    timed = [{"epoch": i + 1, "agent_step": 1024 * (i + 1), "time": t} for i, t in enumerate(times)]
    assert training_seconds(timed) == times
    assert row_progress(timed, TrialBudget(minutes=0.5)) == pytest.approx([1 / 3, 2 / 3, 1.0, 35 / 30, 1.5])


# ------------------------------------------------------------------------------------------------------------
# Two workers share one study; one is killed
@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    choices = [0.001, 0.002, 1e-05]
    spec = write_spec(
        root / "shared.yaml",
        root / "data",
        trials=3,
        # Six epochs: the kill after epoch 1 lands while run.py has epochs left to resume, even when an epoch is
        # quicker than the kill's delivery (a run stopped by SIGTERM still finishes the epoch it is in).
        trial={"agent_steps": 6 * 1024, "reports": 3},
        params={LR: {"type": "categorical", "choices": choices}},
        enqueue=[{LR: lr} for lr in choices],
        pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        worker_timeout_s=3,
    )
    sweep_dir = root / "data" / "sweeps" / "shared"
    SweepWorker(load_spec(spec))  # creates the study, with the three settings enqueued
    # The worker process starts in seconds; this process takes trial 0 at once, so the other one gets trial 1.
    other = start_worker(spec, root / "other.log")
    killer = signal_when_trained(sweep_dir / "trial_0001", 1, signal.SIGKILL, other.pid)
    code, out = run_worker(spec)
    other.wait(timeout=60)
    killer.wait(timeout=10)
    assert code == 0, out
    return spec, sweep_dir, out + (root / "other.log").read_text()


def test_two_workers_share_one_study_and_the_killed_ones_trial_resumes(shared):
    spec, sweep_dir, out = shared
    trials = load_trials(spec)
    assert [(t.number, t.state, t.params[LR]) for t in trials] == [
        (0, TrialState.COMPLETE, 0.001),
        (1, TrialState.FAIL, 0.002),  # its worker was killed
        (2, TrialState.PRUNED, 1e-05),  # below the median of the finished trials at its first report
        (3, TrialState.COMPLETE, 0.002),  # trial 1 again, resuming its run
    ]
    assert trials[0].user_attrs["worker"] != trials[1].user_attrs["worker"]  # two workers, one trial each at once
    assert "worker lost: no heartbeat" in trials[1].user_attrs["error"]
    assert trials[3].user_attrs["run_dir"] == "trial_0001" and trials[3].user_attrs["retry_of"] == 1
    assert [t.value for t in trials if t.state == TrialState.COMPLETE] == [0.001, 0.002]
    assert sorted(trials[3].intermediate_values) == [1, 2, 3]
    assert sorted(p.name for p in sweep_dir.glob("trial_*")) == ["trial_0000", "trial_0001", "trial_0002"]
    for name, starts in (("trial_0000", 1), ("trial_0001", 2), ("trial_0002", 1)):
        log = (sweep_dir / name / "train.log").read_text()
        assert log.count("sweep shared, trial") == starts  # run.py started once per trial (twice for the resumed)
        found = epochs(sweep_dir / name)
        assert found == list(range(1, len(found) + 1)) and found  # each epoch once
    assert epochs(sweep_dir / "trial_0000") == epochs(sweep_dir / "trial_0001") == [1, 2, 3, 4, 5, 6]
    # Pruned: stopped early; or, when its epochs were quicker than a poll, told so after its run had ended, or
    # (the poll falling while run.py was exiting) stopped after its log's last line, "done: epoch 6".
    pruned_log = (sweep_dir / "trial_0002" / "train.log").read_text()
    assert (
        "stopped by SIGTERM" in pruned_log
        or "trial 2: pruned at report 1/3, after its run had ended" in out
        or "done: epoch 6," in pruned_log
    )
    resumed = (sweep_dir / "trial_0001" / "train.log").read_text()
    # The killed worker's run.py got SIGTERM from the kernel, saved after its iteration and exited; then resumed.
    assert "received SIGTERM" in resumed and "resumed from" in resumed
    assert "trial 3 (3 of 3), resuming trial_0001" in out
    assert "best so far: trial 3, parameters/learning_rate 0.002" in out
    # Reports arrive as the worker polls metrics.jsonl, several at once when run.py's epochs are quicker than a poll;
    # the pruner is asked after each, so it stops trial 2 at its first report (1e-05 < the median, 0.001) either way.
    assert "trial 2: pruned at report 1/3" in out


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
    # Sorted by the objective, best first: complete, then pruned, then failed.
    assert rows == [["3", "complete"], ["0", "complete"], ["2", "pruned"], ["1", "fail"]]
    assert page.evaluate("document.querySelector('tr.best').dataset.trial") == "3"
    markers = page.evaluate(
        """[...document.querySelectorAll('svg[data-metric="objective"] circle.marker')].map(c => c.dataset.label)"""
    )
    assert sorted(markers) == ["complete", "complete", "pruned"]
    assert page.evaluate("document.querySelectorAll('table.importance tr').length") == 2  # a header, one parameter
    assert f"{LR}=0.002" in page.evaluate("document.querySelector('pre.command').textContent")
    href = page.evaluate("""document.querySelector('tr.best a[href$="index.html"]').href""")
    assert href.endswith("trial_0001/index.html")  # the retry's run is its first attempt's
    run_page = browser.open(href)  # the trial's own run report
    assert run_page.evaluate("document.title") == "run trial_0001"


# ------------------------------------------------------------------------------------------------------------
# A stopped worker, started again
def test_a_stopped_sweep_goes_on_with_its_timed_trial(tmp_path):
    spec = write_spec(
        tmp_path / "timed.yaml",
        tmp_path / "data",
        trial={"minutes": 0.05, "reports": 2},  # 3 s of training (metrics.jsonl's clock, over both run.py runs)
        base={**TINY, "trainer.total_timesteps": 1_000_000},
        pruner={"type": "none"},
    )
    run_dir = tmp_path / "data" / "sweeps" / "timed" / "trial_0000"
    stopper = signal_when_trained(run_dir, 1, signal.SIGTERM, os.getpid())
    code, out = run_worker(spec)
    stopper.wait(timeout=10)
    assert code == 0 and "interrupted: its worker was stopped by SIGTERM; enqueued again" in out
    code, out = run_worker(spec)  # the same command again
    assert code == 0 and "1 of 1 trials finished" in out

    stopped, retry = load_trials(spec)
    assert stopped.state == TrialState.FAIL and "interrupted" in stopped.user_attrs["error"]
    assert retry.state == TrialState.COMPLETE and retry.params == stopped.params
    assert retry.user_attrs["run_dir"] == "trial_0000" and max(retry.intermediate_values) == 2
    rows = read_metrics(run_dir)[0]
    assert [row["epoch"] for row in rows] == list(range(1, len(rows) + 1))
    assert training_seconds(rows)[-1] >= 0.05 * 60  # it trained its time, and then got SIGTERM
    assert "stopped by SIGTERM" in (run_dir / "train.log").read_text()
