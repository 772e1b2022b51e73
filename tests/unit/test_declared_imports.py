"""Every third-party package the code imports is declared in pyproject.toml, in the group that needs it.

A package reached only through another one's dependencies can vanish when that one changes (aiohttp and mode were
imported but not declared). The runtime code's imports must be in the runtime group (the image installs nothing
else); tests' and bench's may also come from dev and bench. Both locks must pin every declared package.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Imports inside the package that only a developer's command reaches, with why (they come from the dev group).
DEV_ONLY_IN_PACKAGE = {"yaml": "orderflow/asyncapi.py writes docs/asyncapi.yaml; no service imports it"}
LOCAL = {"orderflow", "contracts", "services", "tests", "bench", "conftest", "helpers", "workers", "examples"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    return {canonical(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]) for req in requirements}


def imported_top_levels(*folders: str) -> set[str]:
    found = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name not in LOCAL}


def distributions(modules: set[str]) -> dict[str, set[str]]:
    """Module name -> the installed distributions that provide it (the venv is installed from requirements.lock)."""
    provided = packages_distributions()
    missing = sorted(module for module in modules if module not in provided)
    assert not missing, f"imported but not installed: {missing}"
    return {module: {canonical(dist) for dist in provided[module]} for module in modules}


def pinned(lock: str) -> set[str]:
    text = (ROOT / lock).read_text()
    return {canonical(m.group(1)) for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", text, re.M)}


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = requirement_names(PROJECT["dependencies"])
EXTRAS = {group: requirement_names(reqs) for group, reqs in PROJECT["optional-dependencies"].items()}


def test_runtime_imports_are_runtime_dependencies() -> None:
    undeclared = {
        module: dists
        for module, dists in distributions(imported_top_levels("orderflow", "contracts", "services")).items()
        if not dists & RUNTIME and not (module in DEV_ONLY_IN_PACKAGE and dists & EXTRAS["dev"])
    }
    assert not undeclared, f"imported by the runtime code but not in [project].dependencies: {undeclared}"


def test_test_and_bench_imports_are_declared() -> None:
    declared = RUNTIME | EXTRAS["dev"] | EXTRAS["bench"]
    undeclared = {
        module: dists
        for module, dists in distributions(imported_top_levels("tests", "bench")).items()
        if not dists & declared
    }
    assert not undeclared, f"imported by tests or bench but declared in no group: {undeclared}"


def test_the_locks_pin_every_declared_package_and_agree() -> None:
    full, runtime = pinned("requirements.lock"), pinned("requirements-runtime.lock")
    assert RUNTIME | EXTRAS["dev"] | EXTRAS["bench"] <= full
    assert RUNTIME <= runtime <= full
    assert not {"pytest", "ruff", "playwright", "matplotlib", "uv"} & runtime, "the image's lock holds dev tools"
    versions = {}
    for lock in ("requirements.lock", "requirements-runtime.lock"):
        text = (ROOT / lock).read_text()
        assert "--hash=sha256:" in text
        for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", text, re.M):
            versions.setdefault(canonical(m.group(1)), set()).add(m.group(2))
    assert all(len(v) == 1 for v in versions.values()), {k: v for k, v in versions.items() if len(v) > 1}
