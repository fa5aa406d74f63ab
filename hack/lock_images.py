"""Regenerate each image's lock file (`make lock`): images/<image>/requirements.in -> requirements.lock.

Every third-party package an image installs is pinned with its hashes, resolved for the image's own
Python and platform (not this machine's). Packages the base image provides (CUDA PyTorch, TensorRT) are
left out: the base image's tag pins them, and the Dockerfile's `pip check` proves the rest fits them.
The project's own distributions (local paths in the .in file) are installed by path, without dependencies.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OWN = ("mask2former-spec", "mask2former-trainer", "mask2former-operator", "mask2former-devcluster")
PLATFORM = "x86_64-manylinux_2_28"


@dataclass(frozen=True)
class Image:
    python: str  # the base image's Python
    provided: tuple[str, ...] = ()  # name patterns the base image installs


IMAGES = {
    "operator": Image(python="3.11"),  # python:3.11-slim
    # pytorch/pytorch:2.14.1-cuda12.8-cudnn9-runtime: torch with its CUDA wheels.
    "trainer": Image(python="3.11", provided=("torch", "torchvision", "triton", "nvidia-*", "cuda-*")),
    # nvcr.io/nvidia/tensorrt:25.10-py3: TensorRT's Python bindings and CUDA on Python 3.12; torch from the lock.
    "trt-builder": Image(python="3.12", provided=("tensorrt", "tensorrt-*")),
}
_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", re.M)


def _compile(uv: str, image: str, spec: Image, extra: list[str]) -> str:
    command = [uv, "pip", "compile", "--quiet", "--no-config", "--index-url", "https://pypi.org/simple",
               "--python-version", spec.python, "--python-platform", PLATFORM, "--annotation-style", "line",
               "--custom-compile-command", "make lock", *extra, f"images/{image}/requirements.in"]
    return subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout


def lock(image: str, uv: str) -> Path:
    spec = IMAGES[image]
    # First pass: the full resolution, to find which names the base image provides.
    names = _PINNED.findall(_compile(uv, image, spec, ["--no-header"]))
    left_out = sorted({n for n in names if any(fnmatch.fnmatch(n.lower(), p) for p in spec.provided)} | set(OWN))
    text = _compile(uv, image, spec, ["--generate-hashes", *(a for n in left_out for a in ("--no-emit-package", n))])
    out = REPO / "images" / image / "requirements.lock"
    out.write_text(text)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", metavar="IMAGE", help=f"default: all of {', '.join(IMAGES)}")
    args = parser.parse_args(argv)
    unknown = set(args.images) - set(IMAGES)
    if unknown:
        parser.error(f"unknown image(s) {', '.join(sorted(unknown))}; choose from {', '.join(IMAGES)}")
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        print("error: uv is not installed (it comes with requirements/test.txt: make install)", file=sys.stderr)
        return 2
    for image in args.images or IMAGES:
        print(f"{image}: {lock(image, uv).relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
