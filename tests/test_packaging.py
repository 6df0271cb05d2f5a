"""Packaging: the stubs and the server are two distributions sharing the `llmtrace` namespace.

`llmtrace-api` (clients/python) ships only `llmtrace/api/...` and needs only grpcio, grpcio-status
and protobuf; `llmtrace-server` (the root project) ships the rest of `llmtrace/`. Neither ships
`llmtrace/__init__.py`, so the two portions merge (PEP 420) whether installed from wheels into
one environment, into separate directories, or in editable mode.

The wheel tests build real wheels and install them into throwaway environments that see the
dev environment's third-party packages (grpcio, duckdb...) but not its editable installs: a
fresh venv whose site-packages holds a .pth naming the install directory and the dev
site-packages. A .pth file is processed only in a site directory, so the editable installs'
.pth files in the dev site-packages stay inert there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
STUBS_PROJECT = REPO / "clients" / "python"
DEV_SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
PROTOS = sorted(p.stem for p in (REPO / "proto" / "llmtrace" / "api" / "v1").glob("*.proto"))

PIP = (sys.executable, "-m", "pip")

pytestmark = pytest.mark.timeout(120)


def _env() -> dict[str, str]:
    """The environment without anything that would put the source tree on sys.path."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "LLMTRACE_", "PIP_")) and k != "VIRTUAL_ENV"
    } | {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "PYTHONNOUSERSITE": "1"}


def _run(args: list[str | Path], cwd: Path) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=90, check=False
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _probe(python: Path, code: str, cwd: Path) -> dict[str, object]:
    """Run `code` (which prints one JSON object) isolated from the source tree; return the object."""
    # -P: no script directory or cwd on sys.path; cwd is a scratch directory anyway.
    out = _run([python, "-P", "-c", code], cwd)
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


@dataclass(frozen=True)
class Wheels:
    stubs: Path
    server: Path


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wheels]:
    out = tmp_path_factory.mktemp("wheels")
    # Both builds at once: each is a pip start-up plus a hatchling build.
    builds = [
        subprocess.Popen(
            [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(project)],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for project in (STUBS_PROJECT, REPO)
    ]
    for build in builds:
        output, _ = build.communicate(timeout=90)
        assert build.returncode == 0, output
    yield Wheels(
        stubs=out / "llmtrace_api-0.1.0-py3-none-any.whl",
        server=out / "llmtrace_server-0.1.0-py3-none-any.whl",
    )


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def _metadata(wheel: Path) -> tuple[list[Requirement], str]:
    with zipfile.ZipFile(wheel) as archive:
        dist_info = next(n.split("/")[0] for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = HeaderParser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = (
            archive.read(f"{dist_info}/entry_points.txt").decode()
            if f"{dist_info}/entry_points.txt" in archive.namelist()
            else ""
        )
    return [Requirement(r) for r in metadata.get_all("Requires-Dist") or []], entry_points


def _fresh_venv(directory: Path, *site_dirs: Path) -> tuple[Path, Path]:
    """A venv without pip whose site-packages has a .pth naming `site_dirs`; (python, site-packages)."""
    _run([sys.executable, "-m", "venv", "--without-pip", directory], directory.parent)
    python = directory / "bin" / "python"
    purelib = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], directory)
    )
    site_packages = Path(str(purelib).strip())
    if site_dirs:
        (site_packages / "zz_test_paths.pth").write_text("".join(f"{d}\n" for d in site_dirs))
    return python, site_packages


# --- wheel contents -------------------------------------------------------------------------------------


def test_stubs_wheel_needs_only_grpc_and_protobuf(wheels: Wheels) -> None:
    requirements, _ = _metadata(wheels.stubs)
    assert sorted(canonicalize_name(r.name) for r in requirements) == ["grpcio", "grpcio-status", "protobuf"]
    assert all(r.marker is None and not r.extras for r in requirements)


def test_stubs_wheel_ships_only_the_api_portion(wheels: Wheels) -> None:
    names = _names(wheels.stubs)
    code = [n for n in names if not n.startswith("llmtrace_api-0.1.0.dist-info/")]
    assert "llmtrace/__init__.py" not in names
    assert all(n.startswith("llmtrace/api/") for n in code), code
    assert PROTOS == ["analysis_service", "common", "finding", "ingest_service", "query_service", "span"]
    for proto in PROTOS:
        for suffix in ("_pb2.py", "_pb2.pyi"):
            assert f"llmtrace/api/v1/{proto}{suffix}" in names
    for service in ("ingest_service", "query_service"):
        assert f"llmtrace/api/v1/{service}_pb2_grpc.py" in names
    assert "llmtrace/api/py.typed" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_server_wheel_ships_everything_but_the_api_portion(wheels: Wheels) -> None:
    names = _names(wheels.server)
    assert "llmtrace/__init__.py" not in names
    assert not [n for n in names if n.startswith("llmtrace/api/")]
    for module in ("server.py", "cli/main.py", "cli/sql_command.py", "store/database.py", "rpc/query.py"):
        assert f"llmtrace/{module}" in names
    # The classifier the core loads at start-up is package data.
    assert "llmtrace/security/classifier/prompt_injection.onnx" in names
    assert not [n for n in names if n.startswith(("tests/", "clients/", "proto/"))]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    requirements, entry_points = _metadata(wheels.server)
    assert "llmtrace-api" in {canonicalize_name(r.name) for r in requirements}
    assert "llmtrace = llmtrace.cli.main:main" in entry_points


# --- installed from wheels ---------------------------------------------------------------------------------

_WHERE = """
import json, importlib, llmtrace
out = {"namespace": list(llmtrace.__path__)}
for name in %r:
    try:
        out[name] = importlib.import_module(name).__file__
    except ModuleNotFoundError as exc:
        out[name] = "missing: " + str(exc)
print(json.dumps(out))
"""


def test_stubs_wheel_alone_imports_without_the_server(wheels: Wheels, tmp_path: Path) -> None:
    target = tmp_path / "target"
    _run(
        [*PIP, "install", "--no-deps", "--no-index", "--target", target, wheels.stubs],
        tmp_path,
    )
    assert not (target / "llmtrace" / "__init__.py").exists()
    python, _ = _fresh_venv(tmp_path / "venv", target, DEV_SITE_PACKAGES)
    modules = [
        "llmtrace.api.v1.span_pb2",
        "llmtrace.api.v1.query_service_pb2_grpc",
        "llmtrace.server",
        "grpc",
    ]
    found = _probe(python, _WHERE % modules, tmp_path)
    assert found["namespace"] == [str(target / "llmtrace")]
    for name in modules[:2]:
        assert Path(str(found[name])).is_relative_to(target), found
    # The editable installs of the dev environment are invisible: only the stubs are there.
    assert str(found["llmtrace.server"]).startswith("missing:"), found
    assert Path(str(found["grpc"])).is_relative_to(DEV_SITE_PACKAGES)


def test_both_wheels_merge_into_one_namespace(wheels: Wheels, tmp_path: Path) -> None:
    python, site_packages = _fresh_venv(tmp_path / "venv")
    # Installed one after the other, as two distributions: the second must not clobber the first.
    for wheel in (wheels.server, wheels.stubs):
        _run(
            [*PIP, "--python", python, "install", "--no-deps", "--no-index", wheel],
            tmp_path,
        )
    assert not (site_packages / "llmtrace" / "__init__.py").exists()
    # Third-party dependencies come from the dev environment (added after the installs, so pip
    # did not see the dev environment's editable llmtrace distributions as already installed).
    (site_packages / "zz_test_paths.pth").write_text(f"{DEV_SITE_PACKAGES}\n")
    modules = ["llmtrace.api.v1.query_service_pb2_grpc", "llmtrace.server", "llmtrace.cli.sql_command"]
    found = _probe(python, _WHERE % modules, tmp_path)
    assert found["namespace"] == [str(site_packages / "llmtrace")]
    for name in modules:
        assert Path(str(found[name])).is_relative_to(site_packages), found
    version = _run([tmp_path / "venv" / "bin" / "llmtrace", "--version"], tmp_path)
    assert version.strip() == "llmtrace 0.1.0"


# --- editable (the dev environment) ------------------------------------------------------------------------


def test_source_tree_has_no_namespace_init() -> None:
    assert not (REPO / "llmtrace" / "__init__.py").exists()
    assert not (STUBS_PROJECT / "llmtrace" / "__init__.py").exists()


def test_editable_installs_resolve_both_portions(tmp_path: Path) -> None:
    # A subprocess run outside the repository: only the editable installs can find the code.
    modules = ["llmtrace.api.v1.span_pb2", "llmtrace.server"]
    found = _probe(Path(sys.executable), _WHERE % modules, tmp_path)
    assert Path(str(found["llmtrace.api.v1.span_pb2"])).is_relative_to(STUBS_PROJECT / "llmtrace" / "api")
    assert Path(str(found["llmtrace.server"])).is_relative_to(REPO / "llmtrace")
    namespace = {Path(str(p)) for p in found["namespace"]}  # type: ignore[attr-defined]
    assert namespace == {REPO / "llmtrace", STUBS_PROJECT / "llmtrace"}
