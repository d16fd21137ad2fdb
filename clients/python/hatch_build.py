"""Build hooks: generate the gRPC modules from the repository's protos while the wheel is built.

The ``.proto`` files live in the repository's ``proto/`` directory, two levels above this
project. pip builds a local directory in place, so ``pip install ./clients/python`` finds them
there; an sdist carries a copy under ``proto/``; ``HOURGLASS_PROTO_DIR`` overrides both.

protoc (from grpcio-tools) writes ``*_pb2.py`` and ``*_pb2_grpc.py``, mypy-protobuf writes their
``.pyi`` stubs, all into ``src/hourglass/_proto/v1/``. protoc names imports after the proto
package (``from hourglass.v1 import ...``); they are rewritten to ``hourglass._proto.v1`` so
the generated code lives inside this package while the descriptors keep their true file names
(``hourglass/v1/timers.proto``).

The metadata hook pins grpcio and protobuf to what that generated code needs at run time.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from hatchling.metadata.plugin.interface import MetadataHookInterface
from packaging.requirements import Requirement

PROTO_PACKAGE = Path("hourglass") / "v1"
GENERATED = Path("src") / "hourglass" / "_proto"
PROTO_DIR_ENV = "HOURGLASS_PROTO_DIR"


class ProtosNotFound(RuntimeError):
    """The .proto files are not where a build can find them."""


def find_proto_root(project_root: Path) -> Path:
    """The directory holding ``hourglass/v1/*.proto``: $HOURGLASS_PROTO_DIR, the sdist's copy,
    or the repository's ``proto/``."""
    candidates: list[Path] = []
    override = os.environ.get(PROTO_DIR_ENV)
    if override:
        candidates.append(Path(override))
    candidates += [project_root / "proto", project_root.parent.parent / "proto"]
    for candidate in candidates:
        if any((candidate / PROTO_PACKAGE).glob("*.proto")):
            return candidate.resolve()
    looked = "\n".join(f"  {c / PROTO_PACKAGE}" for c in candidates)
    raise ProtosNotFound(
        "cannot find the Hourglass .proto files needed to generate the gRPC code; looked in:\n"
        f"{looked}\n"
        "Build from a checkout of the Hourglass repository (pip install ./clients/python from "
        f"its root), or set {PROTO_DIR_ENV} to the directory that contains hourglass/v1/."
    )


def _plugin(name: str, module_call: str, workdir: Path) -> str:
    """The path of protoc plugin ``name``: on PATH when the build environment put it there,
    otherwise a small launcher running this interpreter."""
    found = shutil.which(name)
    if found:
        return found
    scripts = Path(sys.executable).parent
    for candidate in (scripts / name, scripts / f"{name}.exe"):
        if candidate.exists():
            return str(candidate)
    launcher = workdir / name
    launcher.write_text(
        f"#!{sys.executable}\nimport sys\nfrom mypy_protobuf.main import {module_call}\n"
        f"sys.exit({module_call}())\n"
    )
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(launcher)


_IMPORT_FROM = re.compile(r"^(\s*)from hourglass\.v1 import ", re.MULTILINE)
_QUALIFIED = re.compile(r"\bhourglass\.v1\.(\w+_pb2(?:_grpc)?)\b")
_LEFTOVER = re.compile(r"^\s*(?:from|import) hourglass\.v1\b", re.MULTILINE)


def _relocate(text: str, path: Path) -> str:
    text = _IMPORT_FROM.sub(r"\1from hourglass._proto.v1 import ", text)
    text = _QUALIFIED.sub(r"hourglass._proto.v1.\1", text)
    if _LEFTOVER.search(text):
        raise RuntimeError(f"{path}: an import of hourglass.v1 was left unrewritten")
    return text


def generate(project_root: Path) -> Path:
    """Generates ``src/hourglass/_proto`` from the protos; returns the directory written."""
    proto_root = find_proto_root(project_root)
    protos = sorted((proto_root / PROTO_PACKAGE).glob("*.proto"))
    target = project_root / GENERATED
    with tempfile.TemporaryDirectory(prefix="hourglass-protoc-") as tmp:
        work = Path(tmp)
        out = work / "out"
        out.mkdir()
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={proto_root}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy', 'main', work)}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc', 'grpc', work)}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            *[str(p.relative_to(proto_root)) for p in protos],
        ]
        result = subprocess.run(command, cwd=proto_root, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"protoc failed ({result.returncode}):\n{result.stderr}\ncommand: {command}"
            )
        staged = work / "_proto"
        (staged / "v1").mkdir(parents=True)
        (staged / "__init__.py").write_text(
            '"""Code generated at build time from the Hourglass protos. Do not edit."""\n'
        )
        (staged / "v1" / "__init__.py").write_text(
            '"""hourglass.v1, generated at build time by protoc and mypy-protobuf."""\n'
        )
        generated = sorted((out / PROTO_PACKAGE).iterdir())
        if not any(p.name.endswith("_pb2_grpc.py") for p in generated):
            raise RuntimeError(f"protoc wrote no gRPC modules into {out / PROTO_PACKAGE}")
        for source in generated:
            if source.suffix in (".py", ".pyi"):
                dest = staged / "v1" / source.name
                dest.write_text(_relocate(source.read_text(), source))
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, target)
    return target


class ProtoBuildHook(BuildHookInterface):  # type: ignore[misc]
    """Generates the gRPC code before the wheel (or editable wheel) is assembled; puts the
    protos into the sdist so that a wheel can be built from it."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        if self.target_name == "sdist":
            source = find_proto_root(root) / PROTO_PACKAGE
            build_data["force_include"][str(source)] = f"proto/{PROTO_PACKAGE.as_posix()}"
            return
        generate(root)
        build_data["artifacts"].append(f"/{GENERATED.as_posix()}/")


class DependenciesHook(MetadataHookInterface):  # type: ignore[misc]
    """Sets the run-time dependencies: grpcio at least the grpcio-tools release that generates
    the code (its ``_pb2_grpc`` modules refuse older grpcio) and protobuf in the range that
    release declares (its ``_pb2`` modules refuse an older runtime)."""

    PLUGIN_NAME = "custom"

    def update(self, metadata: dict[str, Any]) -> None:
        tools = importlib.metadata.version("grpcio-tools")
        protobuf = None
        for line in importlib.metadata.requires("grpcio-tools") or []:
            requirement = Requirement(line)
            if requirement.name == "protobuf":
                requirement.marker = None
                protobuf = str(requirement)
        if protobuf is None:
            raise RuntimeError("grpcio-tools declares no protobuf requirement")
        static = list(self.config.get("static-dependencies", []))
        metadata["dependencies"] = [f"grpcio>={tools}", protobuf, *static]
