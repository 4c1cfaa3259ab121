"""Package layout: the intra-package import graph, read from the source with ``ast``.

Module-level imports (run when the module is imported) must form no cycle, and the
``keras_facemargin.data`` modules must not import ``keras_facemargin.evaluation`` at module
level (data is the lower layer). Imports inside functions (lazy) are collected separately:
they are allowed to point upwards, and are only checked to resolve to real modules.
"""

import ast
from pathlib import Path

PKG = "keras_facemargin"
ROOT = Path(__file__).resolve().parents[1] / PKG


def _modules():
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


MODULES = _modules()


def _resolve(name):
    """The module a dotted name refers to: itself if it is a module, else its longest module prefix."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node, module, is_pkg):
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PKG]
    if node.level:  # relative import
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_pkg else 0)]
        src = ".".join(base + ([node.module] if node.module else []))
    else:
        src = node.module or ""
    if src.split(".")[0] != PKG:
        return []
    # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
    return [f"{src}.{a.name}" if f"{src}.{a.name}" in MODULES else src for a in node.names]


def _walk(node, in_function, out):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            out.append((child, in_function))
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        _walk(child, inner, out)


def _is_type_checking(node):
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_graph():
    """``(module_level, function_level)``: module -> set of intra-package modules it imports."""
    module_level = {m: set() for m in MODULES}
    function_level = {m: set() for m in MODULES}
    for module, (path, is_pkg) in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        # `if TYPE_CHECKING:` imports never run.
        for node in ast.walk(tree):
            if _is_type_checking(node):
                node.body = []
        found = []
        _walk(tree, False, found)
        for node, in_function in found:
            for target in _targets(node, module, is_pkg):
                resolved = _resolve(target)
                assert resolved is not None, f"{module} imports {target}, which is not a module of {PKG}"
                if resolved != module:
                    (function_level if in_function else module_level)[module].add(resolved)
    return module_level, function_level


def _find_cycles(graph):
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


def test_graph_is_read():
    module_level, function_level = import_graph()
    assert len(MODULES) > 50
    # spot checks that the parser sees both kinds of import
    assert "keras_facemargin.evaluation.pair_set" in module_level["keras_facemargin.evaluation.pairs_sets"]
    assert "keras_facemargin.evaluation.pairs_sets" in function_level["keras_facemargin.data.lfw"]


def test_cycle_finder_finds_cycles():
    assert _find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_level_import_cycle():
    module_level, _ = import_graph()
    assert _find_cycles(module_level) == []


def test_data_does_not_import_evaluation_at_module_level():
    module_level, _ = import_graph()
    bad = {m: sorted(t for t in targets if t.startswith(f"{PKG}.evaluation"))
           for m, targets in module_level.items() if m == f"{PKG}.data" or m.startswith(f"{PKG}.data.")}
    assert {m: t for m, t in bad.items() if t} == {}


def test_former_cycles_are_one_way():
    """bin_sets -> pairs_sets, registry -> subface: nothing back, not even inside a function."""
    module_level, function_level = import_graph()
    both = {m: module_level[m] | function_level[m] for m in MODULES}
    ev, ly = f"{PKG}.evaluation", f"{PKG}.layers"
    assert f"{ev}.pairs_sets" in both[f"{ev}.bin_sets"]
    assert f"{ev}.bin_sets" not in both[f"{ev}.pairs_sets"]
    assert f"{ly}.subface" in both[f"{ly}.registry"]
    assert f"{ly}.registry" not in both[f"{ly}.subface"]


def test_lfw_verification_reexports():
    import keras_facemargin as kfm
    from keras_facemargin.data.lfw import lfw_verification
    from keras_facemargin.evaluation import pairs_sets

    assert kfm.data.lfw_verification is lfw_verification is pairs_sets.lfw_verification
    assert "lfw_verification" in kfm.data.__all__
