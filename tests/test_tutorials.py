"""The tutorials in ``tutorials/`` run from top to bottom, in a kernel of the Python running the tests.

Each notebook ends with a cell of assertions on what it promised; a failing cell fails the test with the cell's
traceback. The notebooks are executed on a copy, in a temporary working directory: the stored outputs (rendered
in the docs) are left alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = ["quickstart", "histosge", "visium_hd"]
CELL_TIMEOUT_S = 600
KERNEL_NAME = "stpredict-tests"


def _kernel_manager_class(kernel_dir: Path, env: dict[str, str]):
    """A kernel manager class whose kernel ``stpredict-tests`` runs on ``sys.executable``.

    The ``python3`` kernelspec installed by ipykernel starts ``python`` from ``PATH``, which need not be the
    interpreter (virtual environment) running the tests; a kernelspec written here names it explicitly. The
    notebook client creates (and so shuts down) the manager itself.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    spec_dir = kernel_dir / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "stpredict tests",
        "language": "python",
        "env": env,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))

    class KernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)

    return KernelManager


def execute_notebook(
    path: Path,
    workdir: Path,
    *,
    timeout: int = CELL_TIMEOUT_S,
    inline_figures: bool = False,
    record_timing: bool = False,
):
    """Execute the notebook at ``path`` with ``workdir`` as working directory; return the executed notebook.

    ``inline_figures`` keeps matplotlib's inline backend (figures stored as outputs, as for the docs); otherwise
    figures go to the Agg backend, which is faster. ``record_timing`` stores each cell's start and end times in
    its metadata.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {"HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    if not inline_figures:
        env["MPLBACKEND"] = "Agg"
    client = NotebookClient(
        nb,
        kernel_name=KERNEL_NAME,
        kernel_manager_class=_kernel_manager_class(workdir / ".kernels", env),
        timeout=timeout,
        allow_errors=False,
        record_timing=record_timing,
        resources={"metadata": {"path": str(workdir)}},
    )
    saved = os.environ.pop("MPLBACKEND", None) if inline_figures else None
    try:
        client.execute()
    finally:
        if saved is not None:
            os.environ["MPLBACKEND"] = saved
    return nb


def _text(cell) -> str:
    """Text of a code cell's outputs (streams, results and displays)."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


def _cell(nb, contains: str):
    cells = [c for c in nb.cells if c.cell_type == "code" and contains in c.source]
    assert cells, f"no code cell contains {contains!r}"
    return cells[0]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Notebook name → (executed notebook, seconds), executed once per test session."""
    cache: dict[str, tuple[object, float]] = {}

    def run(name: str):
        if name not in cache:
            workdir = tmp_path_factory.mktemp(name)
            t0 = time.perf_counter()
            nb = execute_notebook(TUTORIALS / f"{name}.ipynb", workdir)
            cache[name] = (nb, time.perf_counter() - t0)
        return cache[name]

    return run


def test_notebooks_are_listed():
    assert sorted(p.stem for p in TUTORIALS.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_kernel_and_final_checks(name):
    import nbformat

    nb = nbformat.read(TUTORIALS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown"
    assert nb.cells[0].source.startswith("# ")
    last = nb.cells[-1]
    assert last.cell_type == "code"
    assert last.source.count("assert ") >= 3


@pytest.mark.slow
def test_quickstart_runs(executed):
    nb, seconds = executed("quickstart")
    assert all(c.execution_count is not None for c in nb.cells if c.cell_type == "code")
    # the summary of the out-of-fold evaluation is a dict of numbers
    summary = _text(_cell(nb, 'scores.attrs["summary"]'))
    assert "'mean':" in summary
    assert "'n_genes': 50" in summary
    # the run record says out-of-fold
    assert "'mode': 'out-of-fold'" in _text(_cell(nb, "record = table.uns"))
    print(f"quickstart: {seconds:.1f} s")


@pytest.mark.slow
def test_histosge_runs(executed):
    nb, seconds = executed("histosge")
    assert all(c.execution_count is not None for c in nb.cells if c.cell_type == "code")
    table = _text(_cell(nb, "summary = pd.DataFrame"))
    assert "ridge" in table
    assert "histosge" in table
    print(f"histosge: {seconds:.1f} s")


@pytest.mark.slow
def test_visium_hd_runs(executed):
    nb, seconds = executed("visium_hd")
    assert all(c.execution_count is not None for c in nb.cells if c.cell_type == "code")
    # the scores table has both references and every method
    table = _text(_cell(nb, "scores = pd.DataFrame"))
    assert "vs truth" in table and "vs measured bins" in table
    for method in ["copy", "neighbors", "'none'", "'measured'", "'denoised'"]:
        assert method in table
    assert "ARI with the true domains" in _text(_cell(nb, "def leiden"))
    # the cells: one prediction per polygon of the segmentation, scored against each cell's truth, and squidpy's
    # neighbourhood enrichment of their clusters beside the true domains
    cell_table = _text(_cell(nb, "cell_scores = pd.DataFrame"))
    for method in ["copy", "neighbors", "'none'", "'measured'", "'denoised'", "bin under the centroid"]:
        assert method in cell_table
    assert "default condition: measured" in _text(_cell(nb, "cell_grid = "))
    assert "z (domains)" in _text(_cell(nb, "sq.gr.nhood_enrichment"))
    # the reader of real data is shown, not run
    assert not any("read_visium_hd" in c.source for c in nb.cells if c.cell_type == "code")
    print(f"visium_hd: {seconds:.1f} s")
