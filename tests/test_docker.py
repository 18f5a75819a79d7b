"""The container installs what the package pins: every `name==version` in docker/Dockerfile equals
pyproject.toml's pin, and the pins that decide checkpoint compatibility (torch, DeepSpeed) are in both."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"""["']?([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9_.+\-]*)["']?""")


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"]) + [d for ds in project["optional-dependencies"].values() for d in ds]
    return {m.group(1).lower(): m.group(2) for d in deps if (m := PIN.fullmatch(d.strip()))}


def _dockerfile_pins() -> dict[str, str]:
    text = (ROOT / "docker/Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return {m.group(1).lower(): m.group(2) for m in PIN.finditer("\n".join(lines))}


def test_dockerfile_pins_equal_pyproject_pins():
    project, docker = _pyproject_pins(), _dockerfile_pins()
    for name in ("torch", "deepspeed"):
        assert name in project, f"pyproject.toml does not pin {name}"
        assert name in docker, f"docker/Dockerfile does not pin {name}"
    for name, version in docker.items():
        assert project.get(name) == version, f"docker/Dockerfile pins {name}=={version}, pyproject.toml {project.get(name)}"


def test_dockerfile_installs_the_package_with_its_pins():
    text = (ROOT / "docker/Dockerfile").read_text()
    assert "pip install" in text and re.search(r"pip install[^\n]*-e '\.\[", text), "the image must install this package"
