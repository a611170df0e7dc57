"""``python -m stpredict``: a readable ``--help`` (no reST markup), for the package and the demo."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stpredict.__main__ import main


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"]])
def test_help_is_plain_text(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m stpredict")
    assert "``" not in out
    assert ":func:" not in out
    assert "mouse olfactory bulb" in out
    assert "python -m stpredict demo --out stpredict_demo" in out  # an example to copy


def test_demo_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    for option, default in [("--out", "stpredict_demo"), ("--model", "ridge"), ("--grid", "ps4"), ("--n-genes", "50")]:
        assert option in out
        assert f"(default: {default})" in out


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_module_help_runs():
    """``python -m stpredict --help`` in a fresh interpreter (the entry point users type)."""
    r = subprocess.run([sys.executable, "-m", "stpredict", "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python -m stpredict")
    assert "``" not in r.stdout


@pytest.mark.slow  # scanpy's first kNN graph in a process compiles umap's numba code: ~10 s
def test_demo_domains_on_a_grid_of_more_than_8192_regions():
    """Where scanpy would switch to pynndescent (whose 0.7 returns a csr_array scanpy 1.11.5 fails on), the demo's
    domains still come: from the exact kNN graph, recovering well-separated groups."""
    import anndata as ad
    import numpy as np

    import stpredict as stp
    from stpredict.__main__ import domains

    rng = np.random.default_rng(0)
    n = 8300
    truth = rng.integers(0, 3, n)
    adata = ad.AnnData((rng.normal(size=(3, 12)) * 5)[truth] + rng.normal(size=(n, 12)).astype(np.float32))
    domains(adata, seed=0)
    assert adata.obsp["distances"].shape == (n, n)
    assert stp.metrics.ari(truth, adata.obs["leiden"]) > 0.9
