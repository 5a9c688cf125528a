"""Reading run and checkpoint files: a truncated or corrupt file is a ``ValueError`` that
names the file and what is wrong (the CLI prints it as one line), never a parser's
traceback or a message without the file name.

Low level on purpose, like ``safety``: it imports nothing from the package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _text(path: Path, kind: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not a {kind} text file (byte {error.start} is not UTF-8); "
            "it is corrupt or another kind of file"
        ) from None


def load_yaml(path: Path) -> Any:
    """The YAML document in ``path``; a syntax error names the file, line and column."""
    import yaml

    text = _text(path, "YAML")
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(error.problem or error.context or "syntax error").split())
        cut = "stream end" in problem or "end of stream" in problem
        cut = cut or (mark is not None and mark.index >= len(text.rstrip()))
        truncated = "; it looks truncated" if cut else ""
        raise ValueError(f"{path}: not valid YAML: {problem}{where}{truncated}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None


def load_json(path: Path) -> Any:
    """The JSON value in ``path``; a syntax error names the file, line and column."""
    text = _text(path, "JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        end = text.rstrip()
        cut = error.pos >= len(end) or not end.endswith(("}", "]"))
        raise ValueError(
            f"{path}: not valid JSON ({error.msg.removesuffix(' at')} at line {error.lineno} "
            f"column {error.colno})" + ("; it looks truncated" if cut else "")
        ) from None


def load_safetensors(path: Path) -> dict[str, Any]:
    """``safetensors.torch.load_file``; a truncated or corrupt file names itself."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as error:
        size = Path(path).stat().st_size
        detail = str(error).removeprefix("Error while deserializing header: ")
        raise ValueError(
            f"{path}: not a readable safetensors file ({detail}; {size} bytes): it is "
            "truncated or corrupt (copied while being written?); copy it again or retrain"
        ) from None


def load_mapping(path: Path, *, what: str) -> dict[str, Any]:
    """A YAML (or JSON) file that must hold a mapping; ``what`` says which (for the
    message), e.g. "a run config with model/train sections"."""
    values = load_json(path) if Path(path).suffix == ".json" else load_yaml(path)
    if not isinstance(values, dict):
        found = "empty" if values is None else f"a {type(values).__name__}"
        raise ValueError(f"{path}: expected {what}, found {found} (truncated?)")
    return values


def same_path(left: object, right: object) -> bool:
    """Whether two non-empty path strings (or Paths) name the same file or folder."""
    if not (isinstance(left, str | Path) and isinstance(right, str | Path) and left and right):
        return False
    return Path(left).expanduser().resolve() == Path(right).expanduser().resolve()
