"""Dependencies point one way: orchestrator -> models, datasets. models/ is pure torch, datasets/
knows no model, and only orchestrator/ talks to Ray or MLflow. Inside orchestrator/ the rooms point
one way too (cli -> tuning -> training -> reporting -> serving -> tracking -> evaluation -> the shared
modules at its top), and no two modules import each other, directly or around a loop."""
import ast
import functools
import gc
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"models": "maskx.models", "datasets": "maskx.datasets", "orchestrator": "maskx.orchestrator"}
FORBIDDEN = {
    "models": ("maskx.datasets", "maskx.orchestrator", "ray", "mlflow"),
    "datasets": ("maskx.models", "maskx.orchestrator", "ray", "mlflow"),
}
# orchestrator/: its rooms from the top down; a room imports only the rooms below it. The shared
# modules at the top (config, the run's set-up, the run folder, the Ray connection, private-API
# compat, redaction) import no room; the entry points (the CLI, the demo) import any.
ENTRY_POINTS = ("maskx.orchestrator.cli", "maskx.orchestrator.demo")
ORDER = ("tuning", "training", "reporting", "serving", "tracking", "evaluation")
ROOMS = {room: tuple(f"maskx.orchestrator.{above}" for above in ORDER[:i]) + ENTRY_POINTS
         for i, room in enumerate(ORDER)}
SHARED = ("config", "run_setup", "run_folder", "ray_cluster", "compat", "redaction", "config_reference")
MAX_LINES = 300  # a module one reads top to bottom


@functools.cache
def parsed(path: Path) -> ast.Module:
    """A file's syntax tree, parsed once. CPython 3.11.7's AST conversion keeps its recursion counter in
    module state (gh-106905, "rarely, in a threaded application"; still seen here on 3.11.7): in the CI lane,
    after the Ray tests, one of this module's ~2000 parses failed with "SystemError: AST constructor
    recursion depth mismatch". Each file is parsed once, with no finalizer run by the collector in
    between, and a parse that hits that error is the same text parsed again."""
    gc.disable()
    try:
        text = path.read_text()
        try:
            return ast.parse(text)
        except SystemError:
            return ast.parse(text)
    finally:
        gc.enable()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGES.get(parts[0], parts[0])] + parts[1:])


def imported_modules(path: Path) -> set[str]:
    """Absolute names of what a module imports (relative imports resolved), inside functions too."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def names_in(names: set[str], banned: tuple[str, ...]) -> set[str]:
    return {name for name in names if any(name == b or name.startswith(b + ".") for b in banned)}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_lower_package_imports_nothing_above_it(package):
    found = {f"{path.name}: {name}" for path in (REPO / package).rglob("*.py")
             for name in names_in(imported_modules(path), FORBIDDEN[package])}
    assert not found


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_the_orchestrator_s_rooms_depend_one_way(room):
    found = {f"{path.name}: {name}" for path in (REPO / "orchestrator" / room).rglob("*.py")
             for name in names_in(imported_modules(path), ROOMS[room])}
    assert not found


def module_files(name: str) -> list[Path]:
    """The files of orchestrator's module or package `name`."""
    module = REPO / "orchestrator" / f"{name}.py"
    return [module] if module.exists() else sorted((REPO / "orchestrator" / name).rglob("*.py"))


def test_the_orchestrator_s_shared_modules_import_no_room():
    rooms = tuple(f"maskx.orchestrator.{room}" for room in ORDER) + ENTRY_POINTS
    found = {f"{path.relative_to(REPO)}: {imported}" for name in SHARED for path in module_files(name)
             for imported in names_in(imported_modules(path), rooms)}
    assert not found


def test_every_module_of_the_orchestrator_has_its_place():
    top = {path.stem for path in (REPO / "orchestrator").glob("*.py")} - {"__init__"}
    folders = {path.name for path in (REPO / "orchestrator").iterdir() if (path / "__init__.py").exists()}
    entry_points = {name.rpartition(".")[2] for name in ENTRY_POINTS}
    assert top | folders == set(SHARED) | set(ORDER) | entry_points


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_is_longer_than_one_reads_top_to_bottom(package):
    long = {str(path.relative_to(REPO)): lines for path in (REPO / package).rglob("*.py")
            if (lines := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that reach each other through imports (strongly connected, more than one)."""
    reach = {m: set() for m in graph}
    for start in graph:
        stack = list(graph[start])
        while stack:
            module = stack.pop()
            if module not in reach[start]:
                reach[start].add(module)
                stack.extend(graph.get(module, ()))
    circles = {frozenset(m for m in graph if m in reach[start] and start in reach[m]) | {start}
               for start in graph if start in reach[start]}
    return sorted(sorted(circle) for circle in circles)


def test_import_circles_are_found():
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_maskx_imports_itself_around_a_loop():
    paths = [path for package in PACKAGES for path in (REPO / package).rglob("*.py")]
    modules = {module_name(path) for path in paths}

    def known(name: str) -> str:
        while name and name not in modules:  # `from .x import Y`: Y is a name in module x
            name = name.rpartition(".")[0]
        return name

    graph = {module_name(path): {known(n) for n in imported_modules(path)} - {"", module_name(path)} for path in paths}
    assert import_circles(graph) == []


def top_level_names(path: Path) -> set[str]:
    """What `from <module> import NAME` can take from a module: what its top level defines or imports."""
    names = set()
    for node in parsed(path).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.If, ast.Try)):
            names.update(top_level_names_in(node))
    return names


def top_level_names_in(node: ast.AST) -> set[str]:
    return {(alias.asname or alias.name).split(".")[0] for child in ast.walk(node)
            if isinstance(child, (ast.Import, ast.ImportFrom)) for alias in child.names}


def test_every_import_of_maskx_names_a_module_and_a_name_that_exist():
    # Commands and rooms import lazily, inside functions: a name left behind by a move would fail only
    # when that command runs. Read every import, at any depth, of maskx's packages, tests and benches.
    files = {module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}
    missing = set()
    for folder in list(PACKAGES) + ["tests", "bench"]:
        for path in (REPO / folder).rglob("*.py"):
            package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
            for node in ast.walk(parsed(path)):
                if not isinstance(node, ast.ImportFrom):
                    continue
                base = node.module or ""
                if node.level:
                    if not package.startswith("maskx."):
                        continue  # tests/ and bench/ import each other relatively: not maskx's packages
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if not base.startswith("maskx."):
                    continue
                if base not in files:
                    missing.add(f"{path.relative_to(REPO)}: no module {base}")
                    continue
                for alias in node.names:
                    if f"{base}.{alias.name}" not in files and alias.name not in top_level_names(files[base]):
                        missing.add(f"{path.relative_to(REPO)}: {base} has no {alias.name}")
    assert not missing


def test_maskx_never_imports_its_folders_by_their_top_level_names():
    # `datasets` is Hugging Face's, `models` and `orchestrator` anyone's: maskx is `maskx.*` only.
    found = {f"{path.relative_to(REPO)}: {name}" for package in ("models", "datasets", "orchestrator", "tests", "bench")
             for path in (REPO / package).rglob("*.py") for name in imported_modules(path)
             if name.split(".")[0] in ("models", "datasets", "orchestrator")}
    assert not found
