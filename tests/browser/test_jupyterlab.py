"""JupyterLab in headless Chromium: run the notebooks, see the widgets render, move a slider, take screenshots.

Every test drives a real server (started as ``medjax lab`` starts it) and a real browser: cells run through
JupyterLab's own "Run All" command, widget images are the bytes the browser displays, and a slider moved with
the keyboard must change those bytes after a round trip through the kernel.
The notebooks run on a copy in a temporary folder (JupyterLab autosaves), with data, runs and step counts set
small through the environment variables the notebooks read.

``test_notebooks_in_real_browser`` also makes the checks of the headless nbclient test
(tests/integration/test_notebooks.py: every code cell ran, no error output, the demo set was written), which
is skipped when this test runs in the same session: one run of the notebooks, not two.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
DOCS_SCREENSHOTS = REPO / "docs" / "screenshots"

def _load_headless_module():
    """tests/integration/test_notebooks.py: the notebook order and small settings are defined once, there."""
    spec = importlib.util.spec_from_file_location("_medjax_headless_notebooks",
                                                  REPO / "tests" / "integration" / "test_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_headless = _load_headless_module()

_TINY = '''
import io
import ipywidgets as widgets
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

def render(k):
    fig = plt.figure(figsize=(2, 2), dpi=40)
    plt.imshow((np.add.outer(np.arange(32), np.arange(32)) + 3 * k) % 7)
    plt.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()

slider = widgets.IntSlider(value=2, min=0, max=10, description="slice")
image = widgets.Image(value=render(2), format="png")
slider.observe(lambda change: setattr(image, "value", render(change["new"])), names="value")
widgets.VBox([slider, image])
'''


def _tiny_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# slider round trip"), nbformat.v4.new_code_cell(_TINY),
                nbformat.v4.new_code_cell("assert slider.value == 2")]
    nbformat.write(nb, path)


def test_widget_slider_round_trip_in_real_browser(tmp_path, start_lab_for, lab_page):
    folder = tmp_path / "nb"
    folder.mkdir()
    _tiny_notebook(folder / "tiny.ipynb")
    server = start_lab_for(folder)
    lab = lab_page(server)
    lab.open_notebook("tiny.ipynb")
    state = lab.run_all(timeout_s=120)
    assert not state["errors"], state["errors"]
    assert state["cells"] == 2
    lab.wait_for_widget_images(1)
    image = lab.widget_images().first
    before = lab.image_digest(image)
    readout = lab.move_slider(lab.slider(lab.notebook, "slice"), presses=3)
    assert readout.strip() == "5"
    lab.wait_for_change(image, before)
    lab.settle(image)
    after = lab.image_digest(image)
    assert after != before
    # the kernel saw the browser's value
    lab.page.evaluate("""async () => {
        const w = window.jupyterapp.shell.currentWidget;
        const f = w.sessionContext.session.kernel.requestExecute({code: 'assert slider.value == 5, slider.value'});
        const reply = await f.done;
        if (reply.content.status !== 'ok') throw new Error(JSON.stringify(reply.content));
    }""")
    lab.screenshot("tiny_slider")


# Per notebook: the slider (by its description) to move in the first widget output holding an image, and how many
# widget images must render. None: no slider check in that notebook (its first image is a live curve). "button":
# a button in that output to click (the launcher's "Reconstruction" opens a viewer: one more image must appear).
CHECKS = {
    "01_explore_data.ipynb": {"slider": "axial", "images": 2},
    "02_pretrain_mae.ipynb": {"slider": None, "images": 1, "button": "Reconstruction"},
    "03_reconstructions_and_attention.ipynb": {"slider": "slice", "images": 2},
    "04_adapt_one_model_to_many_tasks.ipynb": {"slider": "slice", "images": 1},
    "05_federated.ipynb": {"slider": None, "images": 1},
}


_CELL_OUTPUT = ".jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output"  # not outputs nested in widgets


def _check_notebook(lab, name: str, check: dict) -> dict:
    """Open ``name``, run all cells in the browser, check widgets render and a slider round-trips; screenshot."""
    code_cells = sum(c.cell_type == "code" for c in nbformat.read(NOTEBOOKS / name, as_version=4).cells)
    lab.open_notebook(name)
    state = lab.run_all(timeout_s=600)
    assert not state["errors"], f"{name}:\n" + "\n".join(state["errors"])
    # what the headless nbclient test checks (it is skipped when this test runs): every code cell ran
    assert state["cells"] == code_cells and state["executed"] == code_cells, f"{name}: not every cell ran: {state}"
    lab.wait_for_widget_images(check["images"], timeout_s=120)
    page, notebook = lab.page, lab.notebook
    output = notebook.locator(_CELL_OUTPUT).filter(has=page.locator(".widget-image")).first
    image = output.locator(".widget-image").first
    before = lab.image_digest(image)
    result = {"cells": state["cells"], "image": before}
    if check["slider"]:
        slider = lab.slider(output, check["slider"])
        start = slider.locator(".widget-readout").first.inner_text()
        after_readout = lab.move_slider(slider, presses=4)
        assert after_readout != start, f"{name}: slider {check['slider']!r} did not move ({start})"
        result["moved"] = (start, after_readout)
        lab.wait_for_change(image, before, timeout_s=60)
        lab.settle(image)
        result["image_after"] = lab.image_digest(image)
        assert result["image_after"] != before
    if check.get("button"):
        loaded = output.locator(".widget-image[src^='blob:'], .widget-image[src^='data:']")
        shown = loaded.count()
        output.locator("button", has_text=check["button"]).first.click()
        deadline = time.monotonic() + 180
        while loaded.count() <= shown:
            if time.monotonic() > deadline:  # say what the output shows (an error the viewer printed, or nothing)
                pytest.fail(f"{name}: clicking {check['button']!r} showed no new image within 180 s; the output "
                            f"reads: {output.inner_text()[-1000:]!r}", pytrace=False)
            page.wait_for_timeout(500)
        lab.settle(loaded.last)
        result["clicked"] = check["button"]
    stem = Path(name).stem
    outputs = notebook.locator(_CELL_OUTPUT).filter(has=page.locator(".widget-image"))
    result["screenshots"] = []
    for i in range(outputs.count()):  # every cell's widget view, for the README; then the whole window
        item = outputs.nth(i)
        item.scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        result["screenshots"].append(str(lab.screenshot(stem if i == 0 else f"{stem}_{i + 1}", item)))
    output.scroll_into_view_if_needed()
    result["window"] = str(lab.screenshot(f"{stem}_window"))
    lab.close_notebook()  # frees its kernel (JAX, the model) before the next notebook starts one
    return result


@pytest.mark.slow
def test_notebooks_in_real_browser(tmp_path, start_lab_for, lab_page):
    ORDER, notebook_env = _headless.ORDER, _headless.notebook_env

    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in ORDER:
        shutil.copy(NOTEBOOKS / name, folder / name)
    server = start_lab_for(folder, env=notebook_env(tmp_path))
    lab = lab_page(server)
    results, took = {}, {}
    for name in ORDER:
        start = time.perf_counter()
        results[name] = _check_notebook(lab, name, CHECKS[name])
        took[name] = round(time.perf_counter() - start, 1)
    print("notebook seconds (open, run all, widget checks, screenshots, close):", took)
    assert (tmp_path / "data" / "demo" / "dataset.json").is_file()
    if os.environ.get("MEDJAX_UPDATE_SCREENSHOTS") == "1":  # refresh the README's pictures on purpose only
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for r in results.values():
            for shot in r["screenshots"]:
                save_small_png(shot, DOCS_SCREENSHOTS / Path(shot).name)


def save_small_png(src, dst, colors: int = 128) -> None:
    """Copy a screenshot as a palette PNG (about half the bytes; widgets and figures lose nothing visible)."""
    from PIL import Image

    with Image.open(src) as im:
        im.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
