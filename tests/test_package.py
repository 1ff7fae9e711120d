"""The package installs like one: defaults in code, no Flower-layer imports from the library, and a
wheel that works from a fresh virtual environment outside the checkout."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from mas_flower.defaults import RUN_CONFIG_DEFAULTS
from tests.bench_suite import write_suite

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_pyproject_run_config_equals_the_defaults_in_code() -> None:
    flower = _pyproject()["tool"]["flwr"]["app"]["config"]
    assert flower == RUN_CONFIG_DEFAULTS
    assert list(flower) == list(RUN_CONFIG_DEFAULTS)  # in the same groups, so the two read alike
    assert {k: type(v) for k, v in flower.items()} == {k: type(v) for k, v in RUN_CONFIG_DEFAULTS.items()}


def test_the_library_never_imports_the_flower_apps() -> None:
    modules = [f"mas_flower.{p.stem}" for p in (ROOT / "mas_flower").glob("*.py") if p.stem != "__main__"]
    modules += [f"mas_flower.{p.name}" for p in (ROOT / "mas_flower").iterdir() if (p / "__init__.py").is_file()]
    code = ("import importlib, sys\n"
            f"for m in {sorted(modules)!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('server_app', 'client_app'))\n"
            "print(bad); sys.exit(1 if bad else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _site_packages(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_wheel_installs_into_a_fresh_venv_and_the_cli_runs(tmp_path: Path) -> None:
    """Build the wheel, install it (no deps, no network) into a new venv outside the checkout, run the CLI."""
    dist = tmp_path / "dist"
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(dist),
                            str(ROOT)], capture_output=True, text=True, timeout=300)
    if built.returncode != 0 and not isolation and "hatchling" in built.stdout + built.stderr:
        pytest.skip(f"the build backend (hatchling) is neither installed nor reachable: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("mas_flower-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The heavy dependencies (torch, flwr, ...) come from the test's own environment, so nothing is
    # downloaded: its site-packages is put on the new venv's path with a plain .pth line. A plain line
    # is not scanned for .pth files, so an editable install of the checkout there stays invisible.
    (Path(_site_packages(python)) / "_deps_from_test_env.pth").write_text(_site_packages(Path(sys.executable)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300, capture_output=True)

    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MAS_FLOWER_HOME"] = str(tmp_path / "home")
    cli = str(venv / "bin" / "mas-flower")
    where = subprocess.run([str(python), "-c", "import mas_flower; print(mas_flower.__file__)"], cwd=away, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)), where
    version = subprocess.run([cli, "--version"], cwd=away, env=env, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"mas-flower {_pyproject()['project']['version']}"

    suite = write_suite(away / "suite.yaml")
    dry = subprocess.run([cli, "bench", "--dry-run", str(suite)], cwd=away, env=env, capture_output=True,
                         text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "2 runs into" in dry.stdout and "fedavg-sdk-seed0" in dry.stdout
    # A real run needs the app folder `flwr run` reads: refused up front, naming it, with nothing started.
    real = subprocess.run([cli, "bench", str(suite)], cwd=away, env=env, capture_output=True, text=True, timeout=120)
    assert real.returncode == 2 and "holds no pyproject.toml" in real.stderr, real.stderr
    assert not (away / "out").exists()


def _imports(package: Path, *, members: bool = False) -> dict[Path, list[str]]:
    """Every module of the package (path relative to it) -> the modules it imports, lazily or not, except
    under `if TYPE_CHECKING:` (never run). `members`: also `module.name` for each `from module import name`
    (a submodule, when it is one)."""
    import ast

    out: dict[Path, list[str]] = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(block.test) for b in block.body for n in ast.walk(b)}
        names: list[str] = []
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names += [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if members else [])
        out[path.relative_to(package)] = names
    return out


def test_no_import_cycle_in_the_package_lazy_or_not() -> None:
    """The layers stack: no module reaches itself again through the imports it makes, at import time or in a
    function body (a lazy import that closes a cycle only hides it)."""
    package = ROOT / "mas_flower"
    name = {rel: ".".join(("mas_flower", *rel.with_suffix("").parts)).removesuffix(".__init__")
            for rel in _imports(package)}
    modules = set(name.values())
    graph = {name[rel]: {m for m in imported if m in modules and m != name[rel]}
             for rel, imported in _imports(package, members=True).items()}
    cycles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(" -> ".join(path[path.index(module):] + [module]))
            return
        if module not in done:
            for nxt in sorted(graph[module]):
                visit(nxt, [*path, module])
            done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert cycles == []


def test_the_library_and_the_strategy_layer_never_import_the_operator_tools() -> None:
    """`mas_flower/tools/` sits on top: nothing else in the package imports it (lazily or not), so the
    layers cannot grow a cycle back through the command line."""
    offenders = [f"{rel}: {n}" for rel, names in _imports(ROOT / "mas_flower").items()
                 if rel.parts[0] != "tools" and rel.name != "__main__.py"
                 for n in names if n == "mas_flower.tools" or n.startswith("mas_flower.tools.")]
    assert offenders == []


def test_flower_is_imported_only_where_the_package_docstring_says() -> None:
    """The package docstring names the subpackages that import Flower; exactly those do (lazily or not)."""
    import mas_flower

    importers = sorted({f"mas_flower.{rel.parts[0]}" for rel, names in _imports(ROOT / "mas_flower").items()
                        if any(n == "flwr" or n.startswith("flwr.") for n in names)})
    assert importers == ["mas_flower.strategy", "mas_flower.tools"]
    first = (mas_flower.__doc__ or "").split("\n\n")[1]
    assert first.startswith("Flower is imported only in `mas_flower.strategy`") and "`mas_flower.tools`" in first
