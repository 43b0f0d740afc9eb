"""The package's modules import one way: each stage of the pipeline only from the stages below it, and
no module reaches itself through the modules it imports (lazy imports inside functions included), so each
stage can be read, tested and replaced on its own."""

import ast
from pathlib import Path

import spotit

PACKAGE = Path(spotit.__file__).parent


def module_name(path: Path) -> str:
    parts = ["spotit", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The spotit modules that the file at `path` imports, wherever in it the import stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in modules and c != name}
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the spotit modules it imports; `spotit` itself is left out: its __init__ is the API's
    face, which hands on `Index` and the version (PEP 562), and every module may take the version from it."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    del paths["spotit"]
    return {name: imports_of(path, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of nodes, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_relative_imports_in_packages_and_modules():
    graph = import_graph()
    assert "spotit.storage.store" in graph["spotit.search.snapshot"]
    assert "spotit.features.backbones" in graph["spotit.features.extractors"]  # `from . import backbones`


def test_no_module_of_spotit_imports_itself_through_others():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


# the pipeline's stages, lowest first: a module imports only from its own stage or lower ones
# (cluster/ is left out: its backends plug into storage and indexing, which choose them lazily)
STAGES = ["errors", "raw", "images", "fileio", "features", "vectors", "storage", "indexing", "search", "index",
          "grid", "demo", "evaluation", "app", "cli", "_main"]


def stage_of(module: str) -> str:
    return module.split(".")[1]


def test_each_stage_imports_only_the_stages_below_it_and_searches_never_the_writer():
    assert set(STAGES) | {"cluster"} == {stage_of(m) for m in import_graph()}, "a new stage must be placed in STAGES"
    wrong = []
    for module, imported in sorted(import_graph().items()):
        for other in sorted(imported):
            a, b = stage_of(module), stage_of(other)
            if "cluster" in (a, b) or a == b:
                continue
            if STAGES.index(b) > STAGES.index(a) or (a, b) == ("search", "indexing"):
                wrong.append(f"{module} imports {other}")
    assert not wrong, "; ".join(wrong)
