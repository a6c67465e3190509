"""Build hook: generate the gRPC stubs of the key forwarder from its .proto at install time.

Project metadata lives in pyproject.toml; this file only adds the code generation step, so that a
plain `pip install .` (wheel) and `pip install -e .` (editable) both produce
`qkdnode/forwarder/relay_pb2.py` and `relay_pb2_grpc.py` (they are not kept in git). The stubs are
written next to the .proto in the source tree (an editable install imports them from there) and a
regular build then copies them into the wheel like any other module.

grpcio-tools is a build requirement (pyproject.toml [build-system].requires); its version matches
the grpcio runtime pinned in the project dependencies.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.develop import develop as _develop

try:  # setuptools >= 64 (PEP 660 editable installs)
    from setuptools.command.editable_wheel import editable_wheel as _editable_wheel
except ImportError:  # pragma: no cover - older setuptools
    _editable_wheel = None

ROOT = Path(__file__).resolve().parent
SRC = ROOT / "src"
PROTOS = ("qkdnode/forwarder/relay.proto", "qkdnode/keystore/etsi004.proto")


def _outputs(proto: str) -> list[Path]:
    stem = SRC / proto[: -len(".proto")]
    return [stem.with_name(stem.name + "_pb2.py"), stem.with_name(stem.name + "_pb2_grpc.py")]


def generate_stubs(cmd: Command) -> None:
    """Run protoc (from grpcio-tools) on every .proto whose stubs are missing or older."""
    todo = [p for p in PROTOS
            if any(not o.exists() or o.stat().st_mtime < (SRC / p).stat().st_mtime for o in _outputs(p))]
    if not todo:
        return
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as exc:
        raise RuntimeError("generating the gRPC stubs needs grpcio-tools (a build requirement)") from exc
    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    for proto in todo:
        cmd.announce(f"generating gRPC stubs for {proto}", level=2)
        args = ["grpc_tools.protoc", f"-I{SRC}", f"-I{include}",
                f"--python_out={SRC}", f"--grpc_python_out={SRC}", proto]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
        for out in _outputs(proto):
            os.utime(out)


class build_py(_build_py):
    def run(self) -> None:
        generate_stubs(self)
        super().run()


class develop(_develop):  # legacy `setup.py develop`
    def run(self) -> None:
        generate_stubs(self)
        super().run()


cmdclass: dict[str, type[Command]] = {"build_py": build_py, "develop": develop}

if _editable_wheel is not None:
    class editable_wheel(_editable_wheel):  # PEP 660 `pip install -e .`
        # setuptools runs a custom build_py in editable mode but turns its errors into warnings;
        # generating here as well makes a failure fail the install.
        def run(self) -> None:
            generate_stubs(self)
            super().run()

    cmdclass["editable_wheel"] = editable_wheel

setup(cmdclass=cmdclass)
