"""One sweep worker: asks Optuna for a trial, trains it with run.py, reports its progress, tells the result.

    worker = SweepWorker(load_spec("sweep.yaml"), storage_url=None)   # joins (or creates) the study
    exit_code = worker.run()                                          # until the study has spec.trials

Each trial is ``python run.py run=trial_NNNN data_dir={sweep_dir} key=value ...`` in a subprocess: a normal
run directory (config, metrics.jsonl, checkpoints, report), its console output in ``train.log`` there. The
worker reads the growing ``metrics.jsonl`` (``metta.sweep.progress``), reports the objective after each part of
the budget and asks the pruner; a pruned trial, a spent time budget or a stopped sweep sends run.py SIGTERM,
on which it checkpoints and exits 0. On Linux run.py also gets SIGTERM when its worker dies, even by SIGKILL.

Counting: the study is done when ``spec.trials`` of its trials are complete or pruned. Failed trials do not
count: a trial whose values run.py refuses, a run.py that crashed, and a trial whose worker was lost. A worker
is lost when it stops sending heartbeats (a trial system attribute, every ``worker_timeout_s / 4``) for
``worker_timeout_s``; any worker then marks its trial failed and enqueues a retry with the same parameters and
the same run directory, so the retry resumes the run from its last checkpoint (run.py resumes a run directory
of the same name) and the trial is counted once. A worker stopped by SIGTERM or Ctrl-C does the same for its
own trial at once.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, Trial, TrialState

from metta.common.config_cli import ConfigCliError, _lookup
from metta.common.graceful_stop import GracefulStop
from metta.common.run_lock import RunLock, RunLockError
from metta.common.run_report import read_metrics
from metta.sweep.progress import objective_reports, row_progress
from metta.sweep.report import write_sweep_report
from metta.sweep.spec import RUN_PY, TOTAL_STEPS_KEY, SpecError, SweepSpec, cli_arg

logger = logging.getLogger(__name__)

POLL_S = 0.5  # how often a worker looks at its trial's metrics.jsonl and process
HEARTBEAT = "metta:heartbeat"  # trial system attribute: the worker's time.time() at its last heartbeat
SPEC_ATTR = "metta:spec"  # study user attribute: SweepSpec.identity() of the spec that created it
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_PR_SET_PDEATHSIG = 1


def open_storage(url: str | None, sweep_dir: Path) -> optuna.storages.BaseStorage:
    """The study's storage: ``url`` or an SQLite file in the sweep folder.

    ``url``: an SQLAlchemy URL (``sqlite:///...``, ``postgresql://...``, ``mysql+pymysql://...``), a journal
    file ``journal://PATH`` (on a filesystem every worker sees), or ``redis://...`` (a journal in Redis).
    """
    if url is None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{sweep_dir / 'study.db'}"
    if url.startswith("journal://"):
        path = Path(url[len("journal://") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if url.startswith("redis://"):
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalRedisBackend(url))
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # wait out writers
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def _die_with_parent() -> None:
    """In the trial's process before run.py starts: SIGTERM when the worker dies (Linux; elsewhere nothing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (AttributeError, OSError):
        pass


def retry_trial(study: optuna.Study, failed: FrozenTrial) -> None:
    """Enqueue the failed ``failed`` again: same parameters, same run directory (the retry resumes the run),
    the reports it made so far."""
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=failed.params,
            distributions=failed.distributions,
            user_attrs={"run_dir": failed.user_attrs.get("run_dir"), "retry_of": failed.number},
            intermediate_values=failed.intermediate_values,
        )
    )


class SweepWorker:
    def __init__(self, spec: SweepSpec, storage_url: str | None = None, out: TextIO | None = None):
        self.spec = spec
        self.sweep_dir = spec.sweep_dir()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.out = out or sys.stdout
        self.storage_label = storage_url or f"sqlite:///{self.sweep_dir / 'study.db'}"
        self.storage = open_storage(storage_url, self.sweep_dir)
        self.study = self._create_or_join()
        self.study_id = self.storage.get_study_id_from_name(spec.name)
        self.heartbeat_s = spec.worker_timeout_s / 4
        self.stop = GracefulStop()
        self.host = socket.gethostname()

    # ------------------------------------------------------------------------------------------------
    # The study
    def _create_or_join(self) -> optuna.Study:
        spec = self.spec
        common = {
            "study_name": spec.name,
            "storage": self.storage,
            "sampler": spec.sampler.build(),
            "pruner": spec.pruner.build(spec.trial.reports),
        }
        try:
            study = optuna.create_study(direction=spec.objective.direction, **common)
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(**common)
            recorded = study.user_attrs.get(SPEC_ATTR)
            mine = spec.identity()
            if recorded is not None and recorded != mine:
                keys = sorted(k for k in mine if recorded.get(k) != mine[k])
                raise SpecError(
                    f"study {spec.name!r} in {self.storage_label} was created from another spec (it differs in "
                    f"{', '.join(keys)}); give this sweep another name, or the same {', '.join(keys)}"
                ) from None
            return study
        study.set_user_attr(SPEC_ATTR, spec.identity())
        for settings in spec.enqueue:
            study.enqueue_trial(settings)
        return study

    def _trials(self, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def fail_lost_trials(self) -> None:
        """Fail and retry the running trials whose worker sent no heartbeat for ``worker_timeout_s``."""
        now = time.time()
        for trial in self._trials((TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT)
            if beat is None and trial.datetime_start is not None:  # popped a moment ago, no heartbeat yet
                beat = trial.datetime_start.timestamp()
            if beat is None or now - beat <= self.spec.worker_timeout_s:
                continue
            trial_id = self._trial_id(trial.number)
            reason = (
                f"worker lost: no heartbeat for {now - beat:.0f} s (worker_timeout_s={self.spec.worker_timeout_s:g})"
            )
            try:
                self.storage.set_trial_user_attr(trial_id, "error", reason)
                if not self.storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    continue
            except UpdateFinishedTrialError:  # another worker failed it first, or its worker finished it
                continue
            retry_trial(self.study, trial)
            self.say(f"trial {trial.number}: {reason}; retried, resuming {trial.user_attrs.get('run_dir')}")

    # ------------------------------------------------------------------------------------------------
    # The loop
    def say(self, message: str) -> None:
        print(f"[sweep {self.spec.name}] {message}", file=self.out, flush=True)

    def run(self) -> int:
        """Run trials until the study has ``spec.trials`` finished ones; 0 when it has, or when stopped."""
        spec = self.spec
        self.stop.install()
        self.say(
            f"study in {self.storage_label}: {spec.trials} trials of {spec.trial.describe()}, "
            f"{spec.objective.direction} {spec.objective.metric}, pruner {spec.pruner.type}; runs in {self.sweep_dir}"
        )
        waiting_said = False
        try:
            while not self.stop.requested:
                self.fail_lost_trials()
                trials = self._trials()
                done = sum(t.state in FINISHED for t in trials)
                if done >= spec.trials:
                    break
                invalid = sum(t.state == TrialState.FAIL and "invalid" in t.user_attrs for t in trials)
                if invalid > spec.trials:
                    self.say(
                        f"stopping: {invalid} sampled settings were refused by run.py, more than the sweep's "
                        f"{spec.trials} trials; narrow params so that their values fit together"
                    )
                    return 1
                waiting = sum(t.state == TrialState.WAITING for t in trials)
                running = sum(t.state == TrialState.RUNNING for t in trials)
                if not waiting and done + running >= spec.trials:  # the last trials run elsewhere
                    if not waiting_said:
                        self.say(f"{done} of {spec.trials} finished; waiting for {running} running elsewhere")
                        waiting_said = True
                    time.sleep(min(POLL_S * 4, self.heartbeat_s))
                    continue
                waiting_said = False
                trial = self.study.ask()
                if self._surplus(trial.number):
                    continue
                if self.run_trial(trial) == "fatal":
                    return 1
        finally:
            self.stop.uninstall()
            self.write_report()
        if self.stop.requested:
            self.say(f"stopped by {self.stop.signal_name}; run the same command to go on")
        else:
            self.say(f"done: {self._summary()}")
        return 0

    def _surplus(self, number: int) -> bool:
        """Whether the trial just asked for is one too many (two workers asked at the same moment): then it is
        failed before anything ran, and the worker looks again."""
        before = [t for t in self._trials() if t.number < number and t.state != TrialState.FAIL]
        if len(before) < self.spec.trials:
            return False
        trial_id = self._trial_id(number)
        self.storage.set_trial_user_attr(trial_id, "error", "not run: the study already had its trials under way")
        self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        return True

    def _summary(self) -> str:
        trials = self._trials()
        done = sum(t.state in FINISHED for t in trials)
        text = f"{done} of {self.spec.trials} trials finished"
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete:
            best = self.study.best_trial
            text += f"; best so far: trial {best.number}, {self.spec.objective.metric} {best.value:.4g}"
        return text

    def write_report(self) -> Path | None:
        try:
            path = write_sweep_report(self.study, self.spec, self.sweep_dir, self.storage_label)
        except OSError as err:  # the sweep goes on without its page
            self.say(f"could not write the sweep report: {err}")
            return None
        return path

    # ------------------------------------------------------------------------------------------------
    # One trial
    def run_trial(self, trial: Trial) -> str:
        """Train ``trial`` and tell Optuna how it went; returns its outcome: "complete", "pruned", "failed",
        "stopped" (this worker was stopped), "lost" (another worker took the trial over) or "fatal" (a problem
        every trial would have)."""
        spec = self.spec
        trial_id = self._trial_id(trial.number)
        self.storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
        params = spec.suggest(trial)
        frozen = self.storage.get_trial(trial_id)
        run_name = frozen.user_attrs.get("run_dir") or f"trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", run_name)
        trial.set_user_attr("worker", f"{self.host}:{os.getpid()}")
        reported = dict(frozen.intermediate_values)  # a retry's reports so far (its failed attempt made them)
        run_dir = self.sweep_dir / run_name
        started = sum(t.state in (*FINISHED, TrialState.RUNNING) for t in self._trials())  # this one included
        resuming = f", resuming {run_name}" if "retry_of" in frozen.user_attrs else ""
        self.say(f"trial {trial.number} ({started} of {spec.trials}){resuming}: {_shown(params)}")
        try:
            args, config = spec.trial_args(run_name, self.sweep_dir, params)
        except ConfigCliError as err:
            trial.set_user_attr("invalid", True)
            return self._fail(trial, f"run.py refuses these values: {err}")
        try:
            total_steps = _lookup(config, TOTAL_STEPS_KEY)
        except KeyError:
            total_steps = None
        beat = _Heartbeat(self.storage, trial_id, self.heartbeat_s)

        # A lost worker's run.py may still be saving its checkpoint: wait until the run directory is free.
        if not self._wait_for_run_lock(run_dir, beat):
            return self._interrupted(trial) if beat.alive else "lost"
        rows, _ = read_metrics(run_dir)
        if not self._budget_spent(rows, total_steps):  # else a retry of a trial that had trained to its end
            run_dir.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, str(RUN_PY), *args]
            with open(run_dir / "train.log", "a", encoding="utf-8") as log:
                stamp = datetime.datetime.now().isoformat(timespec="seconds")
                log.write(f"# {stamp} sweep {spec.name}, trial {trial.number}: {' '.join(command)}\n")
                log.flush()
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                # The sweep starts no threads, so preexec_fn (run between fork and exec) is safe here.
                process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
                )
            outcome = self._watch(trial, process, run_dir, reported, beat)
            if outcome is not None:
                return outcome
            if process.returncode != 0:
                return self._fail(trial, f"run.py exited {process.returncode}:\n{_tail(run_dir / 'train.log')}")
            rows, _ = read_metrics(run_dir)
        return self._finish(trial, rows, reported, total_steps)

    def _watch(self, trial: Trial, process: subprocess.Popen, run_dir: Path, reported: dict, beat) -> str | None:
        """Follow the running trial until run.py exits: None then, or the outcome when the trial ended here."""
        spec = self.spec
        metrics = run_dir / "metrics.jsonl"
        # (mtime, size) of metrics.jsonl when last read. A resumed run's file is first read when run.py changes
        # it, after its setup: the time-up clock below starts there, as the rows' own clock does.
        seen = _stamp(metrics)
        budget_s = spec.trial.minutes * 60 if spec.trial.minutes else None
        clock = None  # (training seconds at the newest row, time.time() when it was read)
        time_up = False
        while process.poll() is None:
            time.sleep(POLL_S)
            if not beat():
                _terminate(process, beat)
                self.say(f"trial {trial.number}: another worker took it over (it saw no heartbeat in time); stopped")
                return "lost"
            if self.stop.requested:
                _terminate(process, beat)
                return self._interrupted(trial)
            stamp = _stamp(metrics)
            if stamp is not None and stamp != seen:
                seen = stamp
                rows, _ = read_metrics(run_dir)
                progress = row_progress(rows, spec.trial)
                if rows and budget_s is not None:
                    clock = (progress[-1] * budget_s, time.time())
                pruned_at = self._report(trial, rows, progress, reported)
                if pruned_at is not None:
                    _terminate(process, beat)
                    return self._pruned(trial, pruned_at, reported)
            if clock is not None and not time_up and clock[0] + time.time() - clock[1] >= budget_s:
                process.send_signal(signal.SIGTERM)  # time is up: run.py ends its iteration, saves, exits 0
                time_up = True
        return None

    def _report(self, trial: Trial, rows, progress, reported: dict[int, float]) -> int | None:
        """Report the parts of the budget that are over and not yet reported, asking the pruner after each one;
        the part at which it stops the trial, or None.

        Several parts arrive at once when run.py's epochs are quicker than a poll, or when the run ended between
        two polls; asking after each part gives the decision an objective inside Optuna would get, whatever the
        timing."""
        spec = self.spec
        reports = objective_reports(rows, progress, spec.objective.metric, spec.trial.reports)
        for step in sorted(set(reports.complete) - set(reported)):
            trial.report(reports.complete[step], step)
            reported[step] = reports.complete[step]
            self.say(
                f"trial {trial.number}: report {step}/{spec.trial.reports} {spec.objective.metric} {reported[step]:.4g}"
            )
            if trial.should_prune():
                return step
        return None

    def _pruned(self, trial: Trial, step: int, reported: dict[int, float], after: str = "") -> str:
        spec = self.spec
        self.study.tell(trial, state=TrialState.PRUNED)
        self.say(
            f"trial {trial.number}: pruned at report {step}/{spec.trial.reports}{after} "
            f"({spec.objective.metric} {reported[step]:.4g}) | {self._summary()}"
        )
        self.write_report()
        return "pruned"

    def _budget_spent(self, rows, total_steps: int | None) -> bool:
        """Whether the run trained its budget, or to its trainer.total_timesteps (a timed trial can get there)."""
        if not rows:
            return False
        last_step = rows[-1].get("agent_step")
        reached_total = total_steps is not None and isinstance(last_step, int) and last_step >= total_steps
        return reached_total or row_progress(rows, self.spec.trial)[-1] >= 1

    def _finish(self, trial: Trial, rows, reported: dict[int, float], total_steps: int | None) -> str:
        """run.py ended by itself (or had ended before a retry): report the last part, tell the objective."""
        spec = self.spec
        if not self._budget_spent(rows, total_steps):
            step = rows[-1].get("agent_step") if rows else 0
            return self._fail(
                trial, f"run.py exited 0 before the budget ({spec.trial.describe()}), at agent step {step}"
            )
        progress = row_progress(rows, spec.trial)
        pruned_at = self._report(trial, rows, progress, reported)
        if pruned_at is not None:  # the run ended before a poll saw the part the pruner stops it at
            return self._pruned(trial, pruned_at, reported, after=", after its run had ended")
        latest = objective_reports(rows, progress, spec.objective.metric, spec.trial.reports).latest
        if latest is None:  # e.g. no episode ended in a very short trial, or a misspelt metric
            self._fail(trial, f"metrics.jsonl has no value of the objective {spec.objective.metric!r}")
            if not any(t.state in FINISHED for t in self._trials()):  # no trial ever had it: every one would fail
                keys = sorted({k for row in rows for k in row})
                self.say(f"stopping: the keys of trial {trial.number}'s metrics.jsonl are {', '.join(keys)}")
                return "fatal"
            return "failed"
        step, value = latest
        if step not in reported:  # the part the run ended in (a run that stopped between two reports)
            trial.report(value, step)
        self.study.tell(trial, value)
        self.say(f"trial {trial.number}: complete, {spec.objective.metric} {value:.4g} | {self._summary()}")
        self.write_report()
        return "complete"

    def _fail(self, trial: Trial, reason: str) -> str:
        trial.set_user_attr("error", reason)
        self.study.tell(trial, state=TrialState.FAIL)
        self.say(f"trial {trial.number}: failed: {reason}")
        self.write_report()
        return "failed"

    def _interrupted(self, trial: Trial) -> str:
        """This worker is stopping: fail its trial and enqueue it again, so the next worker resumes the run."""
        reason = f"interrupted: its worker was stopped by {self.stop.signal_name}"
        trial.set_user_attr("error", reason)
        self.study.tell(trial, state=TrialState.FAIL)
        retry_trial(self.study, self.storage.get_trial(self._trial_id(trial.number)))
        self.say(f"trial {trial.number}: {reason}; enqueued again, to resume its run")
        return "stopped"

    def _wait_for_run_lock(self, run_dir: Path, beat: _Heartbeat) -> bool:
        """Wait while another process holds the run directory; False when stopped or taken over meanwhile."""
        said = False
        while run_dir.exists():
            try:
                RunLock(run_dir).acquire().release()
                return True
            except RunLockError as err:
                if not said:
                    self.say(f"waiting for {run_dir.name}: {err}")
                    said = True
            if self.stop.requested or not beat():
                return False
            time.sleep(POLL_S)
        return True


class _Heartbeat:
    """Calling it records a heartbeat on the trial when one is due; False once another worker failed the trial."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval_s: float):
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self.last = time.time()
        self.alive = True

    def __call__(self) -> bool:
        if self.alive and time.time() - self.last >= self.interval_s:
            try:
                self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT, time.time())
                self.last = time.time()
            except UpdateFinishedTrialError:
                self.alive = False
        return self.alive


def _terminate(process: subprocess.Popen, beat: _Heartbeat) -> None:
    """SIGTERM: run.py finishes its iteration (an evaluation may take minutes), checkpoints and exits 0; wait for
    that, heartbeating, so that no other worker takes the trial for lost meanwhile."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    while process.poll() is None:
        beat()
        try:
            process.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _shown(params: dict[str, Any]) -> str:
    return " ".join(cli_arg(k, v) for k, v in params.items())


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
