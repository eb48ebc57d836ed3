"""examples/quickstart.ipynb runs top to bottom in a fresh Jupyter kernel (nbclient) at a tiny size.

The kernel is this interpreter (``sys.executable``), through a kernel spec written to a temporary
``JUPYTER_PATH``, so the test needs no installed or registered kernel: ``pip install -e '.[dev]'`` is enough.
``METTA_NOTEBOOK_STEPS`` and ``METTA_NOTEBOOK_EVAL_EPISODES`` shrink the notebook's parameter cell.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
KERNEL_NAME = "metta-notebook-test"
STEPS = 4096  # two rollouts of the notebook's batch_size (2048)
EVAL_EPISODES = 4

# After the notebook, the test runs its learning-curve cell once more with matplotlib made unimportable.
HIDE_MATPLOTLIB = 'import sys\nsys.modules["matplotlib"] = None\nsys.modules["matplotlib.pyplot"] = None'

EVAL_LINE = re.compile(r"^(trained|random) policy:\s+mean episode reward (\S+) over (\d+) episodes$", re.M)


def _stream_text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream" and out.name == "stdout")


def _cell_with_tag(nb, tag: str):
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def test_quickstart_notebook_is_saved_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "save the notebook without outputs"
    assert "TOTAL_TIMESTEPS" in _cell_with_tag(nb, "parameters").source


@pytest.mark.timeout(600)
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    write_kernel_spec(tmp_path / "kernels" / KERNEL_NAME)  # argv: this interpreter, -m ipykernel_launcher
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("METTA_NOTEBOOK_STEPS", str(STEPS))
    monkeypatch.setenv("METTA_NOTEBOOK_EVAL_EPISODES", str(EVAL_EPISODES))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, whatever the shell set
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torch threads: at this size more only contend with other work

    nb = nbformat.read(NOTEBOOK, as_version=4)
    curve_source = _cell_with_tag(nb, "learning-curve").source
    nb.cells += [nbformat.v4.new_code_cell(HIDE_MATPLOTLIB), nbformat.v4.new_code_cell(curve_source)]

    client = NotebookClient(
        nb, kernel_name=KERNEL_NAME, timeout=300, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None
            assert not [o for o in cell.outputs if o.output_type == "error"]

    training = [c for c in nb.cells if c.cell_type == "code" and "train_ppo(" in c.source]
    assert len(training) == 1
    epoch_lines = [line for line in _stream_text(training[0]).splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == STEPS // 2048, _stream_text(training[0])

    evaluation = _stream_text(_cell_with_tag(nb, "evaluation"))
    found = {who: (float(reward), int(episodes)) for who, reward, episodes in EVAL_LINE.findall(evaluation)}
    assert set(found) == {"trained", "random"}, evaluation
    for who, (reward, episodes) in found.items():
        assert episodes == EVAL_EPISODES, evaluation
        assert math.isfinite(reward) and 0.0 <= reward <= 4.0, f"{who} policy's reward {reward} is out of range"

    curve_cell = _cell_with_tag(nb, "learning-curve")
    images = [o for o in curve_cell.outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert images, f"the learning-curve cell drew no figure: {curve_cell.outputs}"

    text_curve = _stream_text(nb.cells[-1])
    assert "text curve" in text_curve and "random policy" in text_curve, text_curve
