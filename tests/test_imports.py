"""The import graph, read from the source with ast (every import, also those inside functions): no cycles between
modules or between packages, model/ imports nothing from utils/, and the bottom floor stays at the bottom."""
import ast
from pathlib import Path

from conftest import REPO

FIRST_PARTY = ('model', 'utils')


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def source_modules() -> dict:
    """module name -> file, for model/ and utils/."""
    return {module_name(p): p for top in FIRST_PARTY for p in sorted((REPO / top).rglob('*.py'))}


def imports_of(path: Path, known: dict) -> set:
    """The first-party modules `path` imports: `from a.b import c` counts as a.b.c when that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f'{node.module}.{alias.name}' if f'{node.module}.{alias.name}' in known else node.module
                     for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.split('.')[0] in FIRST_PARTY}
    return found


def graph() -> dict:
    known = source_modules()
    return {name: imports_of(path, known) for name, path in known.items()}


def find_cycle(edges: dict) -> list:
    """One cycle as a list of nodes, or [] if the graph is acyclic (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 'open':
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = 'done'
        stack.pop()
        return []

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def package_of(module: str) -> str:
    """utils.data.dataset -> utils.data; utils.config -> utils.config (a top-level module is its own floor)."""
    parts = module.split('.')
    return '.'.join(parts[:2]) if parts[0] == 'utils' else parts[0]


def test_no_module_imports_itself_back():
    assert find_cycle(graph()) == []


def test_no_package_imports_itself_back():
    packages = {}
    for module, targets in graph().items():
        packages.setdefault(package_of(module), set()).update(
            package_of(t) for t in targets if package_of(t) != package_of(module))
    assert find_cycle(packages) == []


def test_model_imports_nothing_from_utils():
    offenders = {m: sorted(t for t in targets if t.startswith('utils')) for m, targets in graph().items()
                 if m.startswith('model')}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_the_bottom_floor_imports_only_the_bottom_floor():
    """config and errors are read by everything, so they may import only torch-free, dependency-free modules."""
    edges = graph()
    assert edges['utils.errors'] <= {'model.errors'}
    assert edges['utils.config'] <= {'utils.errors', 'utils.data_yaml', 'model.architectures'}
    # data_yaml lists a split's images only inside the function for a split made of several sources
    assert edges['utils.data_yaml'] <= {'utils.errors', 'utils.data.dataset', 'utils.data.cache'}
    assert edges['model.architectures'] <= {'model.fpn', 'model.shufflenetv2', 'model.leyolo'}   # built lazily


def test_the_graph_reader_sees_a_planted_cycle():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) == []
