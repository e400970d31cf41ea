"""The package's layering, as the README's Architecture section draws it, checked on the source.

The core (top-level modules) imports no product; `packing` imports the core;
`tuning` and `study` import the core and `packing`, never each other; only
the CLI and the package's `__init__` see everything. Private modules of Keras,
Keras Tuner, TensorFlow and JAX are imported in `_compat` only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kt_dropout"
PRODUCTS = ("packing", "tuning", "study")
ALLOWED = {  # layer -> the layers it may import
    "core": {"core"},
    "packing": {"core", "packing"},
    "tuning": {"core", "packing", "tuning"},
    "study": {"core", "packing", "study"},
}
PRIVATE_PREFIXES = ("keras.src", "keras_tuner.src", "tensorflow.python", "jax._src")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _layer(module: str) -> str | None:
    """The layer of a dotted module name inside the package; None for the CLI and the package root."""
    parts = module.split(".")[1:]
    if not parts or parts == ["cli"] or parts == ["__init__"]:
        return None
    return parts[0] if parts[0] in PRODUCTS else "core"


def _dotted(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(relative.parts)


def _imports(path: Path) -> list[str]:
    """Every module `path` imports (absolute names), at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: _dotted(p))
def test_layers_import_downwards_only(path):
    own = _layer(_dotted(path))
    if own is None:
        return
    wrong = sorted({
        name for name in _imports(path)
        if name.startswith("kt_dropout.") and name.split(".")[1] in (*PRODUCTS, "cli")
        and (_layer(name) not in ALLOWED[own])
    })
    assert not wrong, f"{_dotted(path)} ({own}) imports {wrong}, which its layer may not"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: _dotted(p))
def test_private_library_modules_only_in_compat(path):
    if path.name == "_compat.py":
        return
    private = [name for name in _imports(path) if name.startswith(PRIVATE_PREFIXES)]
    assert not private, f"{_dotted(path)} imports private modules {private}: they belong in kt_dropout/_compat.py"


def test_the_check_sees_a_wrong_import(tmp_path):
    """The checker itself can fail: a packing module importing the study is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from kt_dropout.study.results import ResultStore\nimport keras.src.backend\n")
    names = _imports(bad)
    assert "kt_dropout.study.results" in names and _layer("kt_dropout.study.results") not in ALLOWED["packing"]
    assert any(name.startswith(PRIVATE_PREFIXES) for name in names)
