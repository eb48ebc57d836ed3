"""The sweep report: one self-contained HTML page, ``{data_dir}/sweeps/{name}/index.html``, in the style of the
run report (``metta.common.run_report``: its charts and styles, no script, no network).

    write_sweep_report(study, spec, sweep_dir, storage_label)    # rewritten by each worker after each trial
    python -m metta.sweep SPEC.yaml --report                     # the page alone, from the study as it is

It shows the trials table sorted by the objective (complete trials first, then pruned ones, which were scored
on part of the budget), the objective over trials with the best so far, each trial's reports as the pruner saw
them, Optuna's parameter importances, the best settings as a run.py command, and a link to each trial's run
report and console log.
"""

from __future__ import annotations

import html
import math
import time
import warnings
from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from metta.common.fs import atomic_write_text
from metta.common.run_report import PALETTE, Curve, _card, _page, fmt_number, line_chart
from metta.sweep.spec import SweepSpec, cli_arg

STATE_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2, TrialState.WAITING: 3}
CURVES_SHOWN = len(PALETTE)  # the best trials' reports are drawn, one colour each
GREY = "#9aa3b5"
EXTRA_STYLE = """
.importance td.bar { width: 320px; }
.importance .fill { background: #4e79a7; height: 12px; border-radius: 2px; }
tr.best td { background: #eef6ea; }
pre.command { white-space: pre-wrap; word-break: break-all; }
td.error { color: #b03a2e; max-width: 420px; white-space: pre-wrap; font-size: 12px; }
"""


def _sort_key(trial: FrozenTrial, sign: float) -> tuple:
    value = trial.value if trial.value is not None and math.isfinite(trial.value) else None
    return (STATE_ORDER.get(trial.state, 4), value is None, -sign * value if value is not None else 0, trial.number)


def _importances(study: optuna.Study, complete: list[FrozenTrial]) -> str:
    if len(complete) < 2:
        return '<p class="note">Parameter importances need two complete trials or more.</p>'
    try:
        with warnings.catch_warnings():  # e.g. "importances will be equal" for a handful of trials
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as err:  # e.g. every complete trial has the same value
        return f'<p class="note">No parameter importances yet: {html.escape(str(err))}</p>'
    rows = "".join(
        f'<tr><td>{html.escape(name)}</td><td class="bar"><div class="fill" style="width:{100 * share:.1f}%"></div>'
        f"</td><td>{share:.2f}</td></tr>"
        for name, share in importances.items()
    )
    return (
        '<table class="importance"><tr><th>parameter</th><th></th><th>importance</th></tr>'
        f'{rows}</table><p class="note">Optuna\'s default evaluator over the complete trials; the shares add up '
        "to 1.</p>"
    )


def _run_link(sweep_dir: Path, trial: FrozenTrial) -> str:
    name = trial.user_attrs.get("run_dir")
    if not name:
        return "-"
    links = []
    for file, label in (("index.html", html.escape(name)), ("train.log", "log")):
        if (sweep_dir / name / file).is_file():
            links.append(f'<a href="{html.escape(f"{name}/{file}")}">{label}</a>')
    return " · ".join(links) or html.escape(name)


def _param(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def sweep_report_html(study: optuna.Study, spec: SweepSpec, sweep_dir: Path, storage_label: str) -> str:
    trials = study.get_trials(deepcopy=False)
    metric, reports = spec.objective.metric, spec.trial.reports
    sign = 1.0 if spec.objective.direction == "maximize" else -1.0
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    best = max(complete, key=lambda t: (sign * t.value, -t.number)) if complete else None
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}

    cards = [
        _card("finished", f"{len(complete) + len(pruned)} of {spec.trials}"),
        _card("complete", str(len(complete))),
        _card("pruned", str(len(pruned))),
        _card("failed", str(counts[TrialState.FAIL])),
        _card("running", str(counts[TrialState.RUNNING])),
        _card(f"best {metric}", "-" if best is None else fmt_number(best.value)),
    ]
    parts = [f'<section><div class="cards">{"".join(cards)}</div></section>']

    if best is not None:
        command = " ".join(
            ["python run.py", *(cli_arg(k, v) for k, v in spec.base.items()), *spec.budget_args()]
            + [cli_arg(k, v) for k, v in best.params.items()]
        )
        parts.append(
            f"<section><h2>Best trial: {best.number} ({html.escape(metric)} {best.value:.4g})</h2>"
            f'<p>{_run_link(sweep_dir, best)}</p><pre class="command">{html.escape(command)}</pre></section>'
        )

    # Charts: the objective over trials, and the best trials' reports.
    history = []
    running_best = None
    for t in sorted(complete, key=lambda t: t.number):
        running_best = t.value if running_best is None else max(running_best, t.value, key=lambda v: sign * v)
        history.append((float(t.number), running_best))
    curves = [
        Curve("complete", [(float(t.number), t.value) for t in complete], PALETTE[0], line=False),
        Curve("pruned", [(float(t.number), t.value) for t in pruned if t.value is not None], GREY, line=False),
        Curve("best so far", history, PALETTE[1]),
    ]
    charts = [line_chart(f"{metric} per trial", curves, "objective", x_label="trial")]
    ranked = sorted((t for t in trials if t.intermediate_values), key=lambda t: _sort_key(t, sign))[:CURVES_SHOWN]
    report_curves = [
        Curve(f"trial {t.number}", sorted((float(s), v) for s, v in t.intermediate_values.items()), PALETTE[i])
        for i, t in enumerate(ranked)
    ]
    charts.append(line_chart(f"{metric} at each report, best trials", report_curves, "reports", x_label="report"))
    parts.append(f'<section><h2>Objective</h2><div class="charts">{"".join(charts)}</div></section>')
    parts.append(f"<section><h2>Parameter importances</h2>{_importances(study, complete)}</section>")

    # The trials table, best first.
    keys = list(spec.params)
    # A parameter's column is named by the last part of its key (the whole key on hover), unless two share it.
    last = [k.rsplit(".", 1)[-1] for k in keys]
    names = [short if last.count(short) == 1 else key for key, short in zip(keys, last)]
    header = "".join(f"<th>{html.escape(h)}</th>" for h in ["trial", "state", metric, "reports"])
    header += "".join(f'<th title="{html.escape(k)}">{html.escape(n)}</th>' for k, n in zip(keys, names))
    header += "".join(f"<th>{h}</th>" for h in ["minutes", "run", "note"])
    body = []
    for t in sorted(trials, key=lambda t: _sort_key(t, sign)):
        minutes = (
            f"{(t.datetime_complete - t.datetime_start).total_seconds() / 60:.1f}"
            if t.datetime_complete and t.datetime_start
            else "-"
        )
        note = t.user_attrs.get("error", "")
        if "retry_of" in t.user_attrs:
            note = f"retry of trial {t.user_attrs['retry_of']}, resuming its run" + (f"; {note}" if note else "")
        cells = [
            str(t.number),
            t.state.name.lower(),
            _value(t.value),
            f"{len(t.intermediate_values)}/{reports}",
            *(_param(t.params[k]) if k in t.params else "-" for k in keys),
            minutes,
        ]
        row_class = ' class="best"' if best is not None and t.number == best.number else ""
        body.append(
            f'<tr data-trial="{t.number}" data-state="{t.state.name.lower()}"{row_class}>'
            + "".join(f"<td>{c}</td>" for c in cells)
            + f'<td>{_run_link(sweep_dir, t)}</td><td class="error">{html.escape(note)}</td></tr>'
        )
    parts.append(f'<section><h2>Trials</h2><table class="trials"><tr>{header}</tr>{"".join(body)}</table></section>')

    budget = f"{spec.trials} trials of {spec.trial.describe()}, {reports} reports each"
    setup = (
        f"<p>{html.escape(budget)}; {spec.objective.direction} <code>{html.escape(metric)}</code>; "
        f"sampler {spec.sampler.type}, pruner {spec.pruner.type}.</p>"
    )
    parts.append(f"<section><h2>Sweep</h2>{setup}<pre>{html.escape(_spec_yaml(spec))}</pre></section>")
    subtitle = (
        f"{html.escape(str(sweep_dir))} · study in {html.escape(storage_label)} · "
        f"updated {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    page = _page(f"sweep {spec.name}", subtitle, "".join(parts))
    return page.replace("</style>", EXTRA_STYLE + "</style>", 1)


def _spec_yaml(spec: SweepSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def write_sweep_report(study: optuna.Study, spec: SweepSpec, sweep_dir: Path, storage_label: str) -> Path:
    """Write ``{sweep_dir}/index.html`` atomically and return its path."""
    path = Path(sweep_dir) / "index.html"
    atomic_write_text(str(path), sweep_report_html(study, spec, Path(sweep_dir), storage_label))
    return path
