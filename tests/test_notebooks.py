"""The teaching notebooks: every one runs top to bottom on a fresh clone (no out/, so each trains its small models,
notebooks/nbsetup.py), and the committed copies were executed in order, without errors, and show their figures."""
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import NOTEBOOK_SECONDS

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
MIN_FIGURES = 4  # each notebook teaches with pictures


def figures(nb):
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.outputs)


def test_the_four_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == ["01_1d_tokens.ipynb", "02_flow_matching.ipynb", "03_text_to_image.ipynb",
                                           "04_image_to_text.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_was_run_in_order_and_shows_its_figures(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run it top to bottom, then commit"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0].get("evalue")
    assert figures(nb) >= MIN_FIGURES


@pytest.fixture(scope="module")
def no_trained_models(tmp_path_factory):
    """What a fresh clone has: no out/. The notebooks share one work dir, in order, as they would on a laptop."""
    root = tmp_path_factory.mktemp("notebooks")
    return {"FLOWTOK_OUT": str(root / "no-out"), "FLOWTOK_WORK": str(root / "work")}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, no_trained_models, monkeypatch):
    for k, v in no_trained_models.items():
        monkeypatch.setenv(k, v)  # the kernel inherits the environment
    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
    NOTEBOOK_SECONDS[path.stem] = time.time() - t0
    assert figures(nb) >= MIN_FIGURES
