"""The reconstruction notebook executes top to bottom on the smoke run (papermill injects the parameters)."""

import json
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "inspect_reconstructions.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebook_executes_on_smoke_run(smoke_run, smoke_data, tmp_path):
    import papermill

    out = tmp_path / "executed.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), cwd=str(ROOT), kernel_name="python3", progress_bar=False,
                               parameters={"run_dir": str(smoke_run), "data_dir": str(smoke_data), "n_examples": 2})
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # side-by-side panels and histograms


def test_notebook_reports_what_main_py_reported(smoke_run, smoke_data, tmp_path):
    """The notebook scores the run as main.py's evaluation does (the change common to a position's frames taken
    back, model.common_anatomy; before, it showed the network's own output and read 0.1 dB off metrics.json on a
    real run): its per-patient table against the truth holds metrics.json's numbers."""
    import papermill

    out = tmp_path / "executed.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), cwd=str(ROOT), kernel_name="python3", progress_bar=False,
                               parameters={"run_dir": str(smoke_run), "data_dir": str(smoke_data), "n_examples": 1})
    nb = json.loads(out.read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for patient, scores in metrics["truth"]["per_patient"].items():
        line = next(line for line in text.splitlines() if line.split()[:1] == [patient])
        assert float(line.split()[3]) == round(scores["masked"]["model"]["psnr"], 2), (line, scores["masked"])
