"""The worker images are linted (no Docker engine here to build them) and the prefect.yaml parses."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("dockerfile", ["Dockerfile.gpu", "Dockerfile.cpu"])
def test_dockerfiles_pass_hadolint(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    proc = subprocess.run([hadolint, str(ROOT / "docker" / dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_images_copy_every_package_the_deployments_import():
    for dockerfile in ("Dockerfile.gpu", "Dockerfile.cpu"):
        text = (ROOT / "docker" / dockerfile).read_text()
        for package in ("sbt_core", "tasks", "flows", "deployments", "configs"):
            assert f"COPY --chown=sbt:sbt {package} ./{package}" in text, (dockerfile, package)
        assert "USER 1000" in text and "WORKDIR /opt/sbt" in text


def test_prefect_yaml_names_the_same_deployments_as_sbt_deploy():
    from deployments.register import deployment_specs

    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    static = sorted((d["entrypoint"], d["name"]) for d in spec["deployments"])
    dynamic = sorted((d["entrypoint"], d["name"]) for d in deployment_specs({}, "r", "g", "c", None, study={"name": "s"}))
    assert static == dynamic
    for d in spec["deployments"]:
        path, name = d["entrypoint"].split(":")
        assert f"def {name}(" in (ROOT / path).read_text()


def test_image_pins_satisfy_the_projects_requirements():
    """docker/requirements.txt stays in step with pyproject.toml (e.g. SQLAlchemy < 2.1 for the scheduler)."""
    import tomllib

    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "docker" / "requirements.txt").read_text().splitlines():
        name, version = line.strip().split("==")
        pins[name.lower().replace("_", "-")] = version
    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    assert "sqlalchemy" in pins
    for req in deps:
        name = req.name.lower().replace("_", "-")
        if name in pins:
            assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_the_images_torch_satisfies_every_pin_and_the_projects_range():
    """Both images install torch from docker/torch.txt (the GPU base used to bring torch 2.5.1, older than the
    torch>=2.6 the pinned transformers and accelerate need). Their torch requirement is read from the metadata of
    the versions installed here, which must be of the same major line as docker/requirements.txt's pins."""
    checked = []
    from importlib.metadata import requires, version

    from packaging.requirements import Requirement
    from packaging.version import Version

    pins = [Requirement(line) for line in (ROOT / "docker" / "torch.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert [p.name for p in pins] == ["torch"] and len(pins[0].specifier) == 1
    torch = Version(next(iter(pins[0].specifier)).version)
    for dockerfile in ("Dockerfile.gpu", "Dockerfile.cpu"):
        text = (ROOT / "docker" / dockerfile).read_text()
        assert "--requirement docker/torch.txt" in text and "torch==" not in text and "FROM pytorch/" not in text
    import tomllib

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    project = next(Requirement(r) for r in dependencies if Requirement(r).name == "torch")
    assert torch in project.specifier, (str(torch), str(project))
    pinned = dict(line.split("==") for line in (ROOT / "docker" / "requirements.txt").read_text().split())
    for package in ("transformers", "accelerate", "trl", "deepspeed"):
        assert Version(pinned[package]).major == Version(version(package)).major, package
        for r in map(Requirement, requires(package) or []):
            if r.name == "torch" and (r.marker is None or r.marker.evaluate({"extra": "torch"})):
                assert torch in r.specifier, (package, str(r))
                checked.append(package)
    assert {"transformers", "accelerate"} <= set(checked)  # the two that need torch>=2.6
