"""The package's layering, as the README's Architecture section draws it, checked on the source.

Layers, lowest first: `_compat` and `errors` < `storage` < the network (`config`, `model`, `objectives`, `determinism`, `seeding`)
< `data` < `training` < `packing` < `tuning` and `study` (which never import each other) < `cli`. A module
imports its own layer and the layers below it, never one above; only the package's `__init__` sees
everything. Private modules of Keras, Keras Tuner, TensorFlow and JAX are imported in `_compat` only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kt_dropout"
NETWORK = ("config", "model", "objectives", "determinism", "seeding")
PACKAGES = ("storage", "data", "training", "packing", "tuning", "study", "cli")
ORDER = ("compat", "storage", "network", "data", "training", "packing")  # each imports only those before it
ALLOWED = {layer: set(ORDER[: ORDER.index(layer) + 1]) for layer in ORDER}
ALLOWED |= {
    "tuning": ALLOWED["packing"] | {"tuning"},
    "study": ALLOWED["packing"] | {"study"},
    "cli": set(ORDER) | {"tuning", "study", "cli"},
}
PRIVATE_PREFIXES = ("keras.src", "keras_tuner.src", "tensorflow.python", "jax._src")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _layer(module: str) -> str | None:
    """The layer of a dotted name inside the package (a module or a name in it); None for the package root."""
    parts = module.split(".")[1:]
    if not parts or parts == ["__init__"] or parts[0] == "__version__":
        return None
    if parts[0] in ("_compat", "errors"):
        return "compat"
    if parts[0] in NETWORK:
        return "network"
    if parts[0] in PACKAGES:
        return parts[0]
    raise AssertionError(f"{module}: a module outside every layer; give it a place in tests/test_architecture.py")


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
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def _wrong_imports(module: str, imported: list[str]) -> list[str]:
    own = _layer(module)
    if own is None:
        return []
    return sorted({
        name for name in imported
        if name.startswith("kt_dropout.") and _layer(name) is not None and _layer(name) not in ALLOWED[own]
    })


@pytest.mark.parametrize("path", _modules(), ids=lambda p: _dotted(p))
def test_layers_import_downwards_only(path):
    module = _dotted(path)
    wrong = _wrong_imports(module, _imports(path))
    assert not wrong, f"{module} ({_layer(module)}) imports {wrong}, which its layer may not"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: _dotted(p))
def test_private_library_modules_only_in_compat(path):
    if path.name == "_compat.py":
        return
    private = [name for name in _imports(path) if name.startswith(PRIVATE_PREFIXES)]
    assert not private, f"{_dotted(path)} imports private modules {private}: they belong in kt_dropout/_compat.py"


@pytest.mark.parametrize(("module", "source"), [
    ("kt_dropout.packing.trainer", "from kt_dropout.study.results import ResultStore"),
    ("kt_dropout.tuning.search", "from kt_dropout.study import runner"),
    ("kt_dropout.storage.locks", "from kt_dropout.training.record import RunRecord"),
    ("kt_dropout.data.splits", "from kt_dropout.training import stops"),
    ("kt_dropout.model", "from kt_dropout.data.cifar10 import load_cifar10"),
    ("kt_dropout.training.run", "import kt_dropout.cli.console"),
    ("kt_dropout.errors", "from kt_dropout.config import VGGConfig"),
])
def test_the_check_sees_a_wrong_import(tmp_path, module, source):
    """The checker itself can fail: an import running up a layer is caught, inside the core too."""
    bad = tmp_path / "bad.py"
    bad.write_text(source + "\nimport keras.src.backend\n")
    names = _imports(bad)
    assert _wrong_imports(module, names), f"{source!r} in {module} passed the check"
    assert any(name.startswith(PRIVATE_PREFIXES) for name in names)
