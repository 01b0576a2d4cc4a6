"""maskx installs under one import name, `maskx.*`, beside the ML stack.

Built as a user builds it (a wheel of the repository's files) and installed into a new virtualenv
that already holds a package named `datasets` (a stand-in for Hugging Face's): the stand-in must
still import as itself, and maskx must import and run. The new env borrows this env's dependencies
through a path entry, so nothing is downloaded.
"""
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "models", "datasets", "orchestrator", "configs"]
STAND_IN = 'load_dataset = "the stand-in\'s load_dataset"\n'


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of what the build reads: an in-tree build/ left by an older tree could leak
    # stale files into the wheel.
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(source)], check=True)
    return next((tmp_path / "dist").glob("maskx-*.whl"))


def _env_with_stand_in(root: Path) -> tuple[Path, Path]:
    venv.create(root, with_pip=False)
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "datasets").mkdir()
    (site / "datasets" / "__init__.py").write_text(STAND_IN)
    # After the env's own site-packages: torch, ray, mlflow... from this env, never its maskx (an
    # editable install's finder is activated by a .pth file, which a plain path entry does not run).
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, site


def test_the_wheel_holds_only_maskx_packages(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"maskx", "maskx-0.1.0.dist-info"}
    assert "maskx/__init__.py" not in names  # a namespace package: nothing to shadow or collide with
    # Every module of the repository's packages, subpackages too (pyproject lists packages by name:
    # a room left off the list would install without it, and fail only when first imported).
    modules = {f"maskx/{path.relative_to(REPO).as_posix()}" for folder in ("models", "datasets", "orchestrator")
               for path in (REPO / folder).rglob("*.py")}
    assert modules - set(names) == set()
    assert "maskx/configs/tiny-cpu.yaml" in names


def test_installing_maskx_leaves_an_installed_datasets_package_alone(wheel, tmp_path):
    python, site = _env_with_stand_in(tmp_path / "env")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", "--disable-pip-version-check", str(wheel)], check=True)

    assert (site / "datasets" / "__init__.py").read_text() == STAND_IN
    check = ("import datasets, maskx.models, maskx.datasets.stream, maskx.orchestrator.cli, maskx.orchestrator.config as c;"
             "print(datasets.load_dataset);"
             "print(maskx.models.__file__);"
             "print(c.packaged_config('tiny-cpu.yaml'))")
    # -P and a foreign working folder: nothing of the repository is on sys.path.
    shown = subprocess.run([str(python), "-P", "-c", check], cwd=tmp_path, capture_output=True, text=True, check=True)
    stand_in_name, models_file, config = shown.stdout.splitlines()
    assert stand_in_name == "the stand-in's load_dataset"
    assert models_file.startswith(str(site / "maskx" / "models"))
    assert config.startswith(str(site / "maskx" / "configs"))

    usage = subprocess.run([str(tmp_path / "env" / "bin" / "maskx"), "--help"], cwd=tmp_path, capture_output=True,
                           text=True, check=True)
    assert "usage: maskx" in usage.stdout and "train" in usage.stdout


# What the code needs from each dependency, and since which release it exists: the floors in
# pyproject.toml must be at least these (a user with an older one would install and then fail).
NEEDED_SINCE = {
    "torch": ("2.6", "torch.load(weights_only=True) on every checkpoint"),
    "mlflow": ("3.5", "MLflow 3's model APIs; mlflow server --allowed-hosts"),
    "ray": ("2.60", "Ray Train V2's elastic ScalingConfig and FailureConfig.max_preemption_failures"),
}


def test_the_dependency_floors_are_the_versions_the_code_needs():
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    floors = {}
    for line in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        floors[requirement.name] = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    for name, (since, why) in NEEDED_SINCE.items():
        assert floors[name] and min(floors[name]) >= Version(since), f"{name}>={since} ({why}); pyproject says {floors[name]}"
        assert Version(importlib.metadata.version(name)) >= Version(since)
