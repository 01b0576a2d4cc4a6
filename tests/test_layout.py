"""Dependencies point one way: orchestrator -> models, datasets. models/ is pure torch, datasets/
knows no model, and only orchestrator/ talks to Ray or MLflow. Inside orchestrator/ the rooms point
one way too (tuning -> training -> reporting -> serving -> the shared modules at its top), and no two modules
import each other, directly or around a loop."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"models": "maskx.models", "datasets": "maskx.datasets", "orchestrator": "maskx.orchestrator"}
FORBIDDEN = {
    "models": ("maskx.datasets", "maskx.orchestrator", "ray", "mlflow"),
    "datasets": ("maskx.models", "maskx.orchestrator", "ray", "mlflow"),
}
# orchestrator/: each room and what it must not import. The shared modules at the top (config, the
# run's set-up, the run folder, the Ray connection, private-API compat) import no room; the entry
# points (cli, demo) import any.
ROOMS = {
    "serving": ("maskx.orchestrator.training", "maskx.orchestrator.tuning", "maskx.orchestrator.cli",
                "maskx.orchestrator.demo"),
    "reporting": ("maskx.orchestrator.training", "maskx.orchestrator.tuning", "maskx.orchestrator.cli",
                  "maskx.orchestrator.demo"),
    "training": ("maskx.orchestrator.tuning", "maskx.orchestrator.cli", "maskx.orchestrator.demo"),
    "tuning": ("maskx.orchestrator.cli", "maskx.orchestrator.demo"),
}
SHARED = ("config", "run_setup", "run_folder", "ray_cluster", "compat", "redaction")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGES.get(parts[0], parts[0])] + parts[1:])


def imported_modules(path: Path) -> set[str]:
    """Absolute names of what a module imports (relative imports resolved), inside functions too."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
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


def test_the_orchestrator_s_shared_modules_import_no_room():
    rooms = tuple(f"maskx.orchestrator.{room}" for room in ROOMS) + ("maskx.orchestrator.cli", "maskx.orchestrator.demo")
    found = {f"{name}.py: {imported}" for name in SHARED
             for imported in names_in(imported_modules(REPO / "orchestrator" / f"{name}.py"), rooms)}
    assert not found


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


def test_maskx_never_imports_its_folders_by_their_top_level_names():
    # `datasets` is Hugging Face's, `models` and `orchestrator` anyone's: maskx is `maskx.*` only.
    found = {f"{path.relative_to(REPO)}: {name}" for package in ("models", "datasets", "orchestrator", "tests", "bench")
             for path in (REPO / package).rglob("*.py") for name in imported_modules(path)
             if name.split(".")[0] in ("models", "datasets", "orchestrator")}
    assert not found
