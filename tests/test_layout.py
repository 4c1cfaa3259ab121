"""Package layout: the rules of docs/architecture.md, measured from the source with ``ast`` (nothing imported).

* no import cycle among ``keras_facemargin`` modules, counting every import: module level, inside
  functions, under ``if TYPE_CHECKING:`` (a package ``__init__`` re-exporting its own children is not an
  edge from the package to the child);
* ``keras_facemargin.data`` never imports ``keras_facemargin.evaluation`` (data is the lower layer);
* no module over 800 lines;
* one module imports ``keras.src`` (``utils/keras_compat.py``), one module decodes image bytes
  (``utils/images.py``), one ``def build_head``, and every public error class is defined in ``errors.py``.

The measuring code is tested first on a small package written to ``tmp_path``.
"""

import ast
import functools
import re
from pathlib import Path

import pytest

PKG = "keras_facemargin"
ROOT = Path(__file__).resolve().parents[1] / PKG
MAX_LINES = 800
KERAS_COMPAT = f"{PKG}.utils.keras_compat"
IMAGE_DECODER = f"{PKG}.utils.images"
ERRORS = f"{PKG}.errors"
# Raw image decoding calls (OpenCV, TensorFlow, PIL), searched in the source text.
DECODE_RE = re.compile(
    r"cv2\.imdecode|cv2\.imread|tf\.io\.decode_(jpeg|png|image|bmp|gif)|tf\.image\.decode_|Image\.open\("
)


# ----------------------------------------------------------------------------- measuring
def modules(root=ROOT):
    """``{dotted name: (path, is_package)}`` of every ``.py`` file under the package folder ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_pkg)
    return found


@functools.lru_cache(maxsize=None)
def _source(path):
    return path.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def _tree(path):
    return ast.parse(_source(path), filename=str(path))


def _imported_names(node, module, is_pkg):
    """The dotted names an import statement refers to (``from a import b`` -> ``a.b``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:  # relative import
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_pkg else 0)]
        src = ".".join(base + ([node.module] if node.module else []))
    else:
        src = node.module or ""
    return [f"{src}.{a.name}" for a in node.names]


def _resolve(name, mods):
    """The module a dotted name refers to: itself if it is a module, else its longest module prefix."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(mods):
    """``{module: set of package modules it imports}``, any import anywhere in the file.

    A package ``__init__`` importing its own children adds no edge (re-exporting is not depending).
    """
    pkg = next(iter(mods)).split(".")[0]
    graph = {m: set() for m in mods}
    for module, (path, is_pkg) in mods.items():
        for node in ast.walk(_tree(path)):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported_names(node, module, is_pkg):
                if name.split(".")[0] != pkg:
                    continue
                target = _resolve(name, mods)
                assert target is not None, f"{module} imports {name}, which is not a module of {pkg}"
                if target == module or (is_pkg and target.startswith(module + ".")):
                    continue
                graph[module].add(target)
    return graph


def find_cycles(graph):
    """Strongly connected components of more than one module (or a self-loop), by Tarjan."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def keras_src_importers(mods):
    """Modules importing ``keras.src`` (``import keras.src...``, ``from keras.src... import``, ``from keras import src``)."""
    out = set()
    for module, (path, is_pkg) in mods.items():
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if any(n == "keras.src" or n.startswith("keras.src.") for n in _imported_names(node, module, is_pkg)):
                    out.add(module)
    return out


def image_decoders(mods):
    return {m for m, (path, _) in mods.items() if DECODE_RE.search(_source(path))}


def definitions(mods, predicate):
    """``[(module, class or function name)]`` of the definitions for which ``predicate(node)`` holds."""
    return sorted((m, node.name) for m, (path, _) in mods.items()
                  for node in ast.walk(_tree(path)) if predicate(node))


def is_public_error_class(node):
    """A public class named ``*Error``, or one deriving from a ``*Error`` / ``*Exception`` class."""
    if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
        return False
    bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
    return node.name.endswith("Error") or any(b.endswith(("Error", "Exception")) for b in bases)


def line_count(path):
    return _source(path).count("\n") + 1


# ------------------------------------------------------------------ the measuring, on a known package
@pytest.fixture
def toy(tmp_path):
    """A small package whose graph, decoders and definitions are known."""
    files = {
        "__init__.py": "from toy import a\nfrom toy.sub import c\n",  # re-exports: no edges
        "a.py": "import os\nfrom toy.b import f\n",  # module-level edge a -> b
        "b.py": "def f():\n    from . import a\n    return a\n",  # function-level edge b -> a: a cycle
        "sub/__init__.py": "from .c import g\n",
        "sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..d import D\n"
                    "def g():\n    return 1\n",  # TYPE_CHECKING edge c -> d counts too
        "d.py": "import toy.sub.c\nimport cv2\nclass D:\n    pass\nclass BadError(ValueError):\n    pass\n"
                "def build_head():\n    return cv2.imdecode(b'', 1)\n",
        "e.py": "from keras import src\nclass _Private(Exception):\n    pass\nclass Odd(BadError):\n    pass\n",
    }
    for name, text in files.items():
        (tmp_path / "toy" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "toy" / name).write_text(text)
    return modules(tmp_path / "toy")


def test_graph_counts_module_function_and_type_checking_imports(toy):
    graph = import_graph(toy)
    assert graph == {
        "toy": set(),
        "toy.a": {"toy.b"},
        "toy.b": {"toy.a"},
        "toy.sub": set(),
        "toy.sub.c": {"toy.d"},
        "toy.d": {"toy.sub.c"},
        "toy.e": set(),
    }
    assert find_cycles(graph) == [["toy.a", "toy.b"], ["toy.d", "toy.sub.c"]]


def test_cycle_finder():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    assert find_cycles({"a": {"a"}}) == [["a"]]


def test_other_measures(toy, tmp_path):
    assert keras_src_importers(toy) == {"toy.e"}
    assert image_decoders(toy) == {"toy.d"}
    assert definitions(toy, lambda n: isinstance(n, ast.FunctionDef) and n.name == "build_head") == [
        ("toy.d", "build_head")]
    assert definitions(toy, is_public_error_class) == [("toy.d", "BadError"), ("toy.e", "Odd")]
    assert line_count(toy["toy.d"][0]) == 9


# ------------------------------------------------------------------------------ the rules
MODULES = modules()


def test_the_package_is_measured():
    assert len(MODULES) > 50 and f"{PKG}.errors" in MODULES


def test_no_import_cycle_at_any_level():
    assert find_cycles(import_graph(MODULES)) == []


def test_data_never_imports_evaluation():
    graph = import_graph(MODULES)
    bad = {m: sorted(t for t in targets if t == f"{PKG}.evaluation" or t.startswith(f"{PKG}.evaluation."))
           for m, targets in graph.items() if m == f"{PKG}.data" or m.startswith(f"{PKG}.data.")}
    assert {m: t for m, t in bad.items() if t} == {}


def test_no_module_over_the_line_cap():
    over = {m: line_count(path) for m, (path, _) in MODULES.items() if line_count(path) > MAX_LINES}
    assert over == {}


def test_one_keras_src_importer():
    assert keras_src_importers(MODULES) == {KERAS_COMPAT}


def test_one_raw_image_decoder():
    assert image_decoders(MODULES) == {IMAGE_DECODER}


def test_one_build_head():
    found = definitions(MODULES, lambda n: isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and n.name == "build_head")
    assert len(found) == 1, found


def test_error_classes_are_defined_in_errors_only():
    assert [(m, name) for m, name in definitions(MODULES, is_public_error_class) if m != ERRORS] == []
    names = [name for _, name in definitions(MODULES, is_public_error_class)]
    assert len(names) == len(set(names))
