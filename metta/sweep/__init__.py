"""Hyperparameter sweeps on Optuna: every trial is an ordinary run.py run.

    python -m metta.sweep recipes/sweep_navigation_cpu.yaml                       # one worker, SQLite study
    python -m metta.sweep SPEC.yaml --storage postgresql://user@host/metta       # workers on many machines
    python -m metta.sweep SPEC.yaml --report                                      # the sweep report page only

The spec (``metta.sweep.spec``) names the search space over run.py's keys, the objective (a ``metrics.jsonl``
key: ``overview/reward`` or an ``eval/`` score), the number of trials and each trial's budget (agent steps or
minutes). The study lives in ``{data_dir}/sweeps/{name}/study.db`` unless ``--storage`` names another; every
process given the same spec and storage joins the same study. Each trial trains in
``{data_dir}/sweeps/{name}/trial_NNNN/`` (``metta.sweep.worker``), and the sweep report is
``{data_dir}/sweeps/{name}/index.html`` (``metta.sweep.report``). docs/training.md has the guide.
"""

from metta.sweep.report import write_sweep_report
from metta.sweep.spec import SpecError, SweepSpec, load_spec
from metta.sweep.worker import SweepWorker, open_storage

__all__ = ["SpecError", "SweepSpec", "SweepWorker", "load_spec", "open_storage", "write_sweep_report"]
