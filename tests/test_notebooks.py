"""Execute every notebook in notebooks/ (small sizes) and fail on the first cell error.

The kernel is the interpreter running the tests (a kernelspec written to a temporary directory), so the
notebooks see the same environment, with jaxcert installed, wherever the tests run.

The notebooks are stored with the outputs of a complete run at these small sizes, so they can be read
without running them. Refresh them after editing a notebook with
``JAXCERT_NOTEBOOK_SMALL=1 JAX_PLATFORMS=cpu jupyter execute --inplace notebooks/*.ipynb``.
"""

import json
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
KERNEL = "jaxcert-tests"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("kernels")
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jaxcert tests",
        "language": "python",
        "env": {"JAXCERT_NOTEBOOK_SMALL": "1", "JAX_PLATFORMS": "cpu"},
    }
    (root / KERNEL).mkdir()
    (root / KERNEL / "kernel.json").write_text(json.dumps(spec))
    return root


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"smoothed_losses.ipynb", "relu_relaxations.ipynb"} <= names


#: Largest stored notebook (bytes): the outputs are small figures, not data.
MAX_BYTES = 1_500_000


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_with_the_outputs_of_one_complete_run(path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name}: outputs too large"
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), f"{path.name}: rerun it whole"
    outputs = [output for cell in code for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"], f"{path.name}: stored with an error"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name}: no figure stored"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, kernel_dir):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # the stored outputs must not count as this run's
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    manager = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    client = NotebookClient(nb, km=manager, timeout=300, resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    assert any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")
