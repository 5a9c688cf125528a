"""The command line: entry points and the layout command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ernie_sparse import __version__
from ernie_sparse.cli import main


def test_python_dash_m_is_the_same_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ernie_sparse", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"ernie-sparse {__version__}"


def test_layout_command_writes_png(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "bigbird.png"
    code = main(["layout", "bigbird", "num_random=1", "--seq-len", "512", "--out", str(path)])
    assert code == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "layout (4, 8, 8)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bigbird", "colour=3"], "got unknown colour"),
        (["blockbert", "head_split=10:2", "--seq-len", "192"], "not a multiple of 2"),
        (["window", "width"], "must look like key=value"),
    ],
)
def test_layout_command_names_bad_parameters(args, message, tmp_path, capsys) -> None:
    code = main(["layout", *args, "--out", str(tmp_path / "x.png")])
    assert code == 2
    assert message in capsys.readouterr().err
