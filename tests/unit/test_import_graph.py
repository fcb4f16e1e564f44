"""The project's import graph, read with `ast` (nothing is imported): no cycles, the agent layer
never reaches into `s3_ray.rl`, and the library never imports its shells (`jobs`, `deployments`).

Every `import` statement counts, at module level or inside a function. Importing `a.b.c` from
outside package `a.b` also runs `a/b/__init__.py`, so that package is an edge too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("s3_ray", "jobs", "deployments")

def module_name(path: Path) -> str:
    """`s3_ray/eval/methods.py` -> `s3_ray.eval.methods`; a package's `__init__.py` -> the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=1)
def project_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[module_name(path)] = path
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imported_names(tree: ast.AST, importer: str, is_package: bool) -> Iterator[str]:
    """Every dotted module name an import statement in `tree` may load (candidates, unresolved)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = importer.split(".") if is_package else importer.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            for alias in node.names:  # `from pkg import submodule`
                yield f"{module}.{alias.name}"


@lru_cache(maxsize=1)
def import_graph() -> dict[str, frozenset[str]]:
    """Project module -> the project modules importing it runs (packages on the way included)."""
    modules = project_modules()
    graph: dict[str, frozenset[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        own = set(_ancestors(name)) | ({name} if is_package else set())
        targets: set[str] = set()
        for imported in _imported_names(tree, name, is_package):
            if imported not in modules:
                continue
            targets.add(imported)
            targets.update(a for a in _ancestors(imported) if a in modules and a not in own)
        targets.discard(name)
        graph[name] = frozenset(targets)
    return graph


def strongly_connected(graph: dict[str, frozenset[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm, iterative; only components of more than one module (self-imports are dropped)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.add(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    out.append(frozenset(comp))
    return out


def _describe(comp: frozenset[str], graph: dict[str, frozenset[str]]) -> str:
    edges = [f"{a} -> {b}" for a in sorted(comp) for b in sorted(graph[a]) if b in comp]
    return "{" + ", ".join(sorted(comp)) + "}: " + "; ".join(edges)


def _edges_into(prefixes: tuple[str, ...], sources: str) -> list[str]:
    graph = import_graph()
    return sorted(f"{a} -> {b}" for a, targets in graph.items() if a == sources or a.startswith(sources + ".")
                  for b in targets if any(b == p or b.startswith(p + ".") for p in prefixes))


# --- the checker itself ----------------------------------------------------------------------

def test_graph_sees_module_level_function_level_relative_and_package_imports() -> None:
    src = "import s3_ray.types\nfrom . import base\n\ndef f():\n    from s3_ray.eval.methods import build_method\n"
    tree = ast.parse(src)
    names = set(_imported_names(tree, "s3_ray.eval.runner", is_package=False))
    assert {"s3_ray.types", "s3_ray.eval", "s3_ray.eval.base", "s3_ray.eval.methods"} <= names
    graph = import_graph()
    assert "s3_ray.eval.runner" in graph and "jobs.cli" in graph and "deployments" in graph
    # jobs.precompute imports s3_ray.reward.precompute, which runs s3_ray/reward/__init__.py too
    assert {"s3_ray.reward", "s3_ray.reward.precompute"} <= graph["jobs.precompute"]


def test_cycle_finder_reports_each_component_once() -> None:
    graph = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset({"a"}),
             "e": frozenset({"f"}), "f": frozenset({"e"}), "g": frozenset()}
    assert sorted(map(sorted, strongly_connected(graph))) == [["a", "b", "c"], ["e", "f"]]


# --- the rules -------------------------------------------------------------------------------

def test_no_import_cycles_at_all() -> None:
    graph = import_graph()
    cycles = [_describe(c, graph) for c in strongly_connected(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_agent_never_imports_rl() -> None:
    edges = _edges_into(("s3_ray.rl",), "s3_ray.agent")
    assert not edges, "s3_ray.agent must not import s3_ray.rl:\n" + "\n".join(edges)


def test_library_never_imports_jobs_or_deployments() -> None:
    edges = _edges_into(("jobs", "deployments"), "s3_ray")
    assert not edges, "s3_ray must not import its shells:\n" + "\n".join(edges)


# --- the floors of s3_ray.rl -----------------------------------------------------------------

RL_FLOORS = ("model", "algo", "loop", "ray_train")  # bottom to top: each imports only those below


def upward_edges(graph: dict[str, frozenset[str]], package: str = "s3_ray.rl",
                 floors: tuple[str, ...] = RL_FLOORS) -> list[str]:
    """Every edge from a module of one floor of `package` into a higher floor's modules."""
    def floor_of(name: str) -> int | None:
        if not name.startswith(package + "."):
            return None
        head = name[len(package) + 1:].split(".")[0]
        return floors.index(head) if head in floors else None

    out = []
    for source, targets in graph.items():
        low = floor_of(source)
        if low is None:
            continue
        out += [f"{source} -> {t}" for t in sorted(targets) if (high := floor_of(t)) is not None and high > low]
    return sorted(out)


def _external_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    return {n.split(".")[0] for n in names}


def test_floor_checker_flags_an_upward_import() -> None:
    graph = {"s3_ray.rl.algo.update": frozenset({"s3_ray.rl.loop.trainer", "s3_ray.rl.model.policy"}),
             "s3_ray.rl.loop.fit": frozenset({"s3_ray.rl.algo.update", "s3_ray.rl.ray_train.worker"}),
             "s3_ray.rl.model.policy": frozenset({"s3_ray.config"}),
             "s3_ray.rl.loop.trainer": frozenset()}
    assert upward_edges(graph) == ["s3_ray.rl.algo.update -> s3_ray.rl.loop.trainer",
                                   "s3_ray.rl.loop.fit -> s3_ray.rl.ray_train.worker"]


def test_every_rl_module_lives_on_a_floor() -> None:
    stray = sorted(n for n in project_modules() if n.startswith("s3_ray.rl.")
                   and n.split(".")[2] not in RL_FLOORS)
    assert not stray, f"modules of s3_ray.rl outside its floors {RL_FLOORS}: {stray}"


def test_rl_floors_never_import_upward() -> None:
    edges = upward_edges(import_graph())
    assert not edges, "a lower floor of s3_ray.rl imports a higher one:\n" + "\n".join(edges)


def test_only_the_ray_train_floor_imports_ray() -> None:
    offenders = sorted(name for name, path in project_modules().items()
                       if name.startswith("s3_ray.rl.") and not name.startswith("s3_ray.rl.ray_train")
                       and "ray" in _external_imports(path))
    assert not offenders, f"modules below s3_ray.rl.ray_train that import Ray: {offenders}"


# --- benchmarks: scripts, but their imports of each other must not cycle either ----------------

def benchmark_graph() -> dict[str, frozenset[str]]:
    """Benchmark script -> the sibling scripts it imports (they import each other by bare name,
    `import load_guard`, with their folder on `sys.path`; `benchmarks.x` counts too)."""
    modules = {p.stem: p for p in (ROOT / "benchmarks").rglob("*.py")}
    graph = {}
    for stem, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = set()
        for imported in _imported_names(tree, f"benchmarks.{stem}", is_package=False):
            parts = imported.split(".")
            name = parts[1] if parts[0] == "benchmarks" and len(parts) > 1 else parts[0]
            if name in modules and name != stem:
                targets.add(name)
        graph[stem] = frozenset(targets)
    return graph


def test_no_import_cycles_in_benchmarks() -> None:
    graph = benchmark_graph()
    cycles = [_describe(c, graph) for c in strongly_connected(graph)]
    assert not cycles, "import cycles among benchmarks:\n" + "\n".join(cycles)
