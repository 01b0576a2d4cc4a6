"""Dependencies point one way: orchestrator -> models, datasets. models/ is pure torch, datasets/
knows no model, and only orchestrator/ talks to Ray or MLflow."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "models": ("maskx.datasets", "maskx.orchestrator", "ray", "mlflow"),
    "datasets": ("maskx.models", "maskx.orchestrator", "ray", "mlflow"),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_lower_package_imports_nothing_above_it(package):
    found = {f"{path.name}: {name}" for path in (REPO / package).glob("*.py") for name in imported_modules(path)
             if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[package])}
    assert not found


def test_maskx_never_imports_its_folders_by_their_top_level_names():
    # `datasets` is Hugging Face's, `models` and `orchestrator` anyone's: maskx is `maskx.*` only.
    found = {f"{path.relative_to(REPO)}: {name}" for package in ("models", "datasets", "orchestrator", "tests", "bench")
             for path in (REPO / package).rglob("*.py") for name in imported_modules(path)
             if name.split(".")[0] in ("models", "datasets", "orchestrator")}
    assert not found
