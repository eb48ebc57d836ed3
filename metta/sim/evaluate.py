"""Evaluate saved policies and the scripted baselines on a suite: ``python -m metta.sim.evaluate``.

    python -m metta.sim.evaluate train_dir/my_run --suite navigation            # the run's latest checkpoint
    python -m metta.sim.evaluate file://train_dir/my_run/checkpoints/model_0184.pt train_dir/other:best
    python -m metta.sim.evaluate --suite navigation --episodes 5 --workers 2    # the baselines alone

A policy is a ``file://`` uri or path of a ``.pt`` file, a run directory or a ``checkpoints/`` folder (its latest
policy, or with ``:best`` the one whose stored evaluation scores ``--metric`` highest), or a ``wandb://`` uri.
Every policy and the scripted baselines (``random``, ``nearest_altar``; ``--no-baselines`` leaves them out) run
the same sims with the same ``--seed``, so they play the same maps. The (policy, sim) jobs run in ``--workers``
processes, each writing its episodes to the evaluation database ``{data_dir}/evaluations.sqlite`` (as training
does); the table printed at the end is read back from it (``metta.common.evaluation_db.sim_scores``), so it shows
what the leaderboard (``python -m metta.sim.leaderboard``) shows. ``--replays`` records every episode and
writes a viewer page for each sim's first one, under ``{data_dir}/eval_replays/``.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import re
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from metta.agent.policy_store import PolicyStore
from metta.common.evaluation_db import EvaluationDB, SimScore, category_scores, database_path, sim_scores
from metta.mettagrid.config import MettaGridConfig
from metta.mettagrid.config_loader import load_env_config
from metta.mettagrid.replay import write_viewer_page
from metta.sim.baselines import BASELINE_SCHEME, BASELINES, baseline_record, baseline_uri
from metta.sim.simulation import Simulation
from metta.sim.simulation_config import SimulationSuiteConfig
from metta.sim.suites import SUITE_NAMES, suite_categories, suite_config, suite_env_hashes

logger = logging.getLogger("metta.sim.evaluate")


@dataclass(frozen=True)
class PolicySpec:
    """A policy as the workers load it: a concrete uri (a file, or ``baseline://name``) and a display label."""

    uri: str
    label: str


@dataclass(frozen=True)
class Job:
    policy: PolicySpec
    sim: str
    suite: str
    num_episodes: int
    seed: int
    device: str
    database: str
    replay_dir: str | None


@dataclass(frozen=True)
class JobResult:
    policy_uri: str
    sim: str
    complete: bool
    viewer_page: str | None


# ----------------------------------------------------------------------------------------------------------
# Resolving policy arguments


def resolve_policy(arg: str, store: PolicyStore, metric: str) -> PolicySpec:
    """One command-line policy as a concrete file uri (see the module docstring for the accepted forms)."""
    spec, select = arg, "latest"
    match = re.fullmatch(r"(.*):(latest|best)", arg)
    if match and not arg.startswith("wandb://"):
        spec, select = match.group(1), match.group(2)
    if not spec.startswith("wandb://"):
        path = Path(spec.removeprefix("file://"))
        if (path / "checkpoints").is_dir():
            path = path / "checkpoints"  # a run directory
        if not path.exists():
            raise ValueError(f"policy {arg!r}: {path} does not exist (give a .pt file, a run directory or wandb://...)")
        spec = f"file://{path.absolute()}"
    selector = "top" if select == "best" else "latest"
    try:
        record = store.policy_record(spec, selector_type=selector, metric=metric)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"policy {arg!r}: {err}") from None
    epoch = record.metadata.get("epoch")
    return PolicySpec(record.uri, f"{record.run_name}@{epoch}" if epoch is not None else record.run_name)


def _sim_max_steps(config: SimulationSuiteConfig, sim: str) -> int:
    """How long a sim's episodes are: the jobs are started longest first, so the workers finish together."""
    env = config.simulations[sim].env
    if isinstance(env, MettaGridConfig):
        return env.game.max_steps
    if isinstance(env, str):
        return load_env_config(env, config.simulations[sim].env_overrides or None).game.max_steps
    return 0


# ----------------------------------------------------------------------------------------------------------
# Worker side

_suites: dict[tuple[str, int], SimulationSuiteConfig] = {}
_policies: dict[str, Any] = {}


def _init_worker() -> None:
    # Each worker is one process on a shared machine: torch's default of one thread per core would oversubscribe.
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")


def run_job(job: Job) -> JobResult:
    """Run one (policy, sim) simulation; its episodes go to the database. Safe to call in any process."""
    key = (job.suite, job.num_episodes)
    if key not in _suites:
        _suites[key] = suite_config(job.suite, job.num_episodes)
    suite = _suites[key]
    if job.policy.uri not in _policies:
        if job.policy.uri.startswith(BASELINE_SCHEME):
            _policies[job.policy.uri] = baseline_record(job.policy.uri.removeprefix(BASELINE_SCHEME))
        else:
            store = PolicyStore(device=job.device)
            record = store.policy_record(job.policy.uri, selector_type="latest")
            _ = record.policy  # load it now, once per worker
            _policies[job.policy.uri] = record
    record = _policies[job.policy.uri]
    sim = Simulation(
        job.sim,
        suite.simulations[job.sim],
        record,
        None,
        job.device,
        "serial",
        replay_dir=job.replay_dir,
        suite_name=suite.name,
        seed=job.seed,
        database=job.database,
    )
    results = sim.simulate()
    page = str(write_viewer_page(results.replay_paths[0])) if results.replay_paths else None
    return JobResult(job.policy.uri, job.sim, results.complete, page)


# ----------------------------------------------------------------------------------------------------------
# The command


def _label_dir(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", label) or "policy"


def evaluate(
    policies: list[PolicySpec],
    suite: str,
    num_episodes: int | None,
    workers: int,
    seed: int,
    data_dir: str | os.PathLike,
    device: str = "cpu",
    replays: bool = False,
    console: Console | None = None,
) -> list[SimScore]:
    """Run every policy on every sim of ``suite`` and return their scores as stored in the database."""
    console = console or Console(stderr=True)
    config = suite_config(suite, num_episodes)
    episodes = num_episodes or max(s.num_episodes for s in config.simulations.values())
    database = database_path(data_dir)
    EvaluationDB(database).close()  # create it (or fail on a newer schema) before any worker starts
    order = sorted(config.simulations, key=lambda s: -_sim_max_steps(config, s))
    jobs = [
        Job(
            policy=p,
            sim=sim,
            suite=suite,
            num_episodes=episodes,
            seed=seed,
            device=device,
            database=str(database),
            replay_dir=str(Path(data_dir, "eval_replays", _label_dir(p.label))) if replays else None,
        )
        for sim in order
        for p in policies
    ]
    results: list[JobResult] = []
    start = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{suite}: {len(policies)} policies x {len(order)} sims", total=len(jobs))
        if workers <= 1:
            _init_worker()
            for job in jobs:
                results.append(run_job(job))
                progress.advance(task)
        else:
            context = multiprocessing.get_context("spawn")  # no forked torch or numba state
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
                pending: set[Future] = {pool.submit(run_job, job) for job in jobs}
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        results.append(future.result())
                        progress.advance(task)
    elapsed = time.monotonic() - start
    console.print(f"{len(jobs)} simulations in {elapsed:.1f} s with {max(workers, 1)} worker(s); database {database}")
    for r in results:
        if not r.complete:
            console.print(f"[yellow]{r.sim} for {r.policy_uri}: score missing (stopped by its max_time_s guard)")
    if replays:
        pages = sorted(r.viewer_page for r in results if r.viewer_page)
        console.print(f"{len(pages)} replay viewer pages under {Path(data_dir, 'eval_replays')}")
    with EvaluationDB(database) as db:
        return sim_scores(db, sims=suite_env_hashes(config), policy_uris=[p.uri for p in policies])


def score_table(scores: list[SimScore], config: SimulationSuiteConfig, policies: list[PolicySpec], title: str) -> Table:
    """Sims (then categories) down, policies across; each cell the mean and its 95% interval, or "missing"."""
    table = Table(title=title)
    table.add_column("sim")
    for p in policies:
        table.add_column(p.label, justify="right")
    by_key = {(s.policy_uri, s.sim): s for s in scores}
    for sim in config.simulations:
        cells = []
        for p in policies:
            s = by_key.get((p.uri, sim))
            cells.append(_cell(s.score if s else None, s.ci95 if s else None))
        table.add_row(sim, *cells)
    categories = suite_categories(config)
    per_policy = category_scores(scores, categories, sims=list(config.simulations))
    for category in categories:
        row = []
        for p in policies:
            values = [v for key, v in per_policy.items() if key[0] == p.uri]
            row.append(_cell(values[0].get(category) if values else None, None))
        table.add_row(f"[bold]{category}/score", *row)
    return table


def _cell(score: float | None, ci: float | None) -> str:
    if score is None or (isinstance(score, float) and math.isnan(score)):
        return "[red]missing"
    return f"{score:.3f}" + (f" ± {ci:.3f}" if ci is not None else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metta.sim.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "policies", nargs="*", help="policy uris: file://..., a .pt path, a run directory[:best], wandb://..."
    )
    parser.add_argument("--suite", default="navigation", choices=SUITE_NAMES, help="the suite (default: navigation)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per sim (default: the suite's, 5)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the envs and the policies' sampling (default: 0)")
    parser.add_argument("--data-dir", default=None, help="where the database is (default: DATA_DIR or ./train_dir)")
    parser.add_argument("--device", default="cpu", help="torch device for the policies (default: cpu)")
    parser.add_argument("--replays", action="store_true", help="record replays and a viewer page per sim")
    parser.add_argument("--no-baselines", action="store_true", help="leave out the random and nearest_altar baselines")
    parser.add_argument(
        "--metric", default="navigation/score", help="what ':best' ranks checkpoints by (default: navigation/score)"
    )
    args = parser.parse_args(argv)
    if args.episodes is not None and args.episodes < 1:
        parser.error(f"--episodes={args.episodes} must be at least 1")
    if args.workers < 1:
        parser.error(f"--workers={args.workers} must be at least 1")
    if args.no_baselines and not args.policies:
        parser.error("nothing to evaluate: give policy uris, or leave out --no-baselines")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    data_dir = args.data_dir or os.environ.get("DATA_DIR") or "./train_dir"
    store = PolicyStore(device="cpu")
    try:
        policies = [resolve_policy(p, store, args.metric) for p in args.policies]
    except ValueError as err:
        parser.error(str(err))
    if not args.no_baselines:
        policies += [PolicySpec(baseline_uri(name), name) for name in BASELINES]
    scores = evaluate(policies, args.suite, args.episodes, args.workers, args.seed, data_dir, args.device, args.replays)
    config = suite_config(args.suite, args.episodes)
    Console().print(score_table(scores, config, policies, f"{args.suite}: mean episode reward (± 95% interval)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
