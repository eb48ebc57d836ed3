"""``python -m metta.sweep SPEC.yaml [--storage URL] [--report]``: run a sweep worker (see metta.sweep)."""

from __future__ import annotations

import argparse
import logging
import sys

import optuna

from metta.sweep.spec import SpecError, load_spec
from metta.sweep.worker import SweepWorker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metta.sweep",
        description="Run trials of a hyperparameter sweep (each a run.py run) until its study has spec.trials.",
    )
    parser.add_argument("spec", help="the sweep spec, a YAML file (docs/training.md, 'Hyperparameter sweeps')")
    parser.add_argument(
        "--storage",
        help="the Optuna storage every worker of the study uses: an SQLAlchemy URL (sqlite:///..., postgresql://..., "
        "mysql+pymysql://...), journal://PATH (a journal file on a shared filesystem) or redis://...; "
        "default: sqlite:///{data_dir}/sweeps/{name}/study.db",
    )
    parser.add_argument("--report", action="store_true", help="write the sweep report page and exit (no trials)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the worker prints its own progress lines
    try:
        spec = load_spec(args.spec)
        worker = SweepWorker(spec, storage_url=args.storage)
    except SpecError as err:  # before any trial starts
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.report:
        path = worker.write_report()
        print(path.resolve().as_uri() if path else "no report written")
        return 0 if path else 1
    code = worker.run()
    worker.say(f"sweep report: {(worker.sweep_dir / 'index.html').resolve().as_uri()}")
    return code


if __name__ == "__main__":
    sys.exit(main())
