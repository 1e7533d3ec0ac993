"""The notebooks run top to bottom without a person (nbclient, the venv's python3 kernel), in order.

They run on copies in a temporary folder with ``MEDJAX_NOTEBOOK_DATA`` / ``MEDJAX_NOTEBOOK_RUNS`` pointing there
and small settings (``MEDJAX_NOTEBOOK_SUBJECTS``, ``..._RESOLUTION_MM``, ``..._STEPS``, ``..._VARIANT``), so
nothing is written into the repository. Each notebook asserts what it shows; any error output fails the test
with the cell's source and traceback. All five run in one test because 02 trains the checkpoint that 03 and 04
load (and so that pytest-xdist cannot split them across workers).

When the session also runs the browser test of the same notebooks (tests/browser, marker ``browser``), the
headless run is skipped, with that reason: the browser run executes every cell through JupyterLab and makes the
same checks, so running the notebooks twice would only repeat their JAX compilation.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
ORDER = ("01_explore_data.ipynb", "02_pretrain_mae.ipynb", "03_reconstructions_and_attention.ipynb",
         "04_adapt_one_model_to_many_tasks.ipynb", "05_federated.ipynb")

# The smallest settings the notebooks accept; shared with the browser test.
SMALL_SETTINGS = {
    "MEDJAX_NOTEBOOK_SUBJECTS": "4",
    "MEDJAX_NOTEBOOK_RESOLUTION_MM": "3.0",
    "MEDJAX_NOTEBOOK_STEPS": "20",
    "MEDJAX_NOTEBOOK_VARIANT": "Mu/8",
    "MEDJAX_NOTEBOOK_ROUNDS": "1",  # one federated round: the deployment test covers two
    "JAX_PLATFORMS": "cpu",
    "MPLBACKEND": "Agg",
}


def notebook_env(root: Path) -> dict[str, str]:
    """Environment for notebooks run under ``root`` (data in root/data/demo, runs in root/runs/notebook)."""
    env = dict(SMALL_SETTINGS)
    # MEDJAX_NOTEBOOK_* set by the caller win (e.g. finer settings when refreshing the README's screenshots)
    env.update({k: v for k, v in os.environ.items() if k.startswith("MEDJAX_NOTEBOOK_")})
    env["MEDJAX_NOTEBOOK_DATA"] = str(root / "data" / "demo")
    env["MEDJAX_NOTEBOOK_RUNS"] = str(root / "runs" / "notebook")
    return env


def _errors(nb) -> list[str]:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append(f"--- cell:\n{cell.source}\n--- {o['ename']}: {o['evalue']}\n" + "\n".join(o["traceback"]))
    return out


def test_notebooks_are_committed_without_outputs():
    for name in ORDER:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs"
        assert sum(c.cell_type == "code" and "assert" in c.source for c in nb.cells) >= 2, f"{name}: few checks"


BROWSER_TEST = "tests/browser/test_jupyterlab.py::test_notebooks_in_real_browser"


def browser_runs_notebooks(session) -> bool:
    """True when this session also runs :data:`BROWSER_TEST` (selected: not deselected by ``-m``/``-k``).

    That test runs the same notebooks, in the same order and settings, through JupyterLab in Chromium and checks
    everything this one does (every code cell ran, no error output, the demo set was written); it fails, never
    skips, when Chromium is missing. Running them twice costs minutes of JAX compilation on a 2-core runner."""
    return any(item.nodeid.endswith(BROWSER_TEST) for item in session.items)


@pytest.mark.slow
def test_notebooks_run_headless_in_order(tmp_path, monkeypatch, request):
    if browser_runs_notebooks(request.session):
        pytest.skip(f"the notebooks run in {BROWSER_TEST} in this session (same order, settings and checks); "
                    "this nbclient run is for sessions without it, e.g. -m 'not browser'")
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    work = tmp_path / "notebooks"
    work.mkdir()
    for key, value in notebook_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    timeout = int(os.environ.get("MEDJAX_NOTEBOOK_CELL_TIMEOUT", "600"))
    took = {}
    for name in ORDER:
        shutil.copy(NOTEBOOKS / name, work / name)
        nb = nbformat.read(work / name, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(work)}})
        start = time.perf_counter()
        try:
            client.execute()
        except CellExecutionError:
            pass  # reported below with every error output
        finally:
            took[name] = round(time.perf_counter() - start, 1)
            nbformat.write(nb, work / name)  # executed copy, for a look after a failure
        errors = _errors(nb)
        assert not errors, f"{name} failed (executed copy: {work / name}):\n" + "\n".join(errors)
        ran = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count for c in ran), f"{name}: not every cell ran"
    print("notebook seconds:", took)
    assert (tmp_path / "data" / "demo" / "dataset.json").is_file()
