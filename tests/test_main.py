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
