"""notebooks/quickstart.ipynb runs top to bottom (smoke-test size) in the venv's own kernel."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def _outputs(cell) -> str:
    """A code cell's printed text and displayed text/markdown, joined."""
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        data = out.get("data", {})
        parts += [data.get("text/markdown", ""), data.get("text/plain", "")]
    return "\n".join(parts)


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.timeout(600)
def test_quickstart_runs_and_prints_the_metric_table(tmp_path, monkeypatch):
    monkeypatch.setenv("LTU_QUICK", "1")
    monkeypatch.setenv("LTU_CONFIGS", str(REPO / "configs"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Which interpreter runs the kernel: "python3" must resolve to this venv's, not the system's.
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    assert _outputs(nb.cells[0]).strip() == sys.executable
    text = "\n".join(_outputs(c) for c in nb.cells if c.cell_type == "code")
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    header = [h.strip() for h in rows[0]]
    assert header[:5] == ["model", "UA", "RA", "TA", "MIA"] and "Avg.Gap" in header
    table = {r[0].strip(): dict(zip(header[1:], map(float, r[1:]), strict=True)) for r in rows[1:]}
    assert list(table) == ["Original", "Retrain", "LTU"]
    assert table["Retrain"]["Avg.Gap"] == 0.0  # the gold standard's distance to itself
    assert all(0.0 <= row[k] <= 100.0 for row in table.values() for k in ("UA", "RA", "TA"))
    assert any("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))
    # the two-sided verdict of every model, and the sentence behind the LTU one
    verdicts = re.findall(
        r"^\s*(Original|Retrain|LTU): (forgotten|still detectable|over-forgotten)$", text, re.M
    )
    assert [name for name, _ in verdicts] == ["Original", "Retrain", "LTU"]
    assert re.search(r"^verdict: (forgotten|still detectable|over-forgotten): ", text, re.M)
    for stage in ("original", "retrain", "ltu"):
        assert (tmp_path / "runs" / "quickstart" / stage / "checkpoints" / "last.ckpt").is_file()
