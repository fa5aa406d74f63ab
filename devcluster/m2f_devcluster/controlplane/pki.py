"""The real control plane's credentials: a CA, the API server's serving pair, the service-account key, a token.

Made once per data dir with the `openssl` command (argv lists, no shell) and reused on the next start.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVING_SANS = "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"


class PkiError(RuntimeError):
    """openssl is missing or failed; the message says what to install or what failed."""


@dataclass(frozen=True)
class Pki:
    dir: Path

    ca_cert = property(lambda self: self.dir / "ca.crt")
    ca_key = property(lambda self: self.dir / "ca.key")
    serving_cert = property(lambda self: self.dir / "apiserver.crt")
    serving_key = property(lambda self: self.dir / "apiserver.key")
    service_account_key = property(lambda self: self.dir / "sa.key")
    token_file = property(lambda self: self.dir / "tokens.csv")

    @property
    def admin_token(self) -> str:
        return self.token_file.read_text().split(",", 1)[0]


def ensure_pki(directory: Path) -> Pki:
    """Create what is missing; an existing set (a restarted dev cluster) is kept as it is."""
    pki = Pki(Path(directory))
    pki.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not pki.ca_cert.is_file():
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", pki.ca_key, "-out", pki.ca_cert,
                 "-days", "3650", "-subj", "/CN=m2f-dev-cluster-ca",
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    if not pki.serving_cert.is_file():
        request = pki.dir / "apiserver.csr"
        extensions = pki.dir / "apiserver.ext"
        extensions.write_text(f"subjectAltName={SERVING_SANS}\nextendedKeyUsage=serverAuth\n"
                              "keyUsage=critical,digitalSignature,keyEncipherment\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", pki.serving_key, "-out", request,
                 "-subj", "/CN=kube-apiserver")
        _openssl("x509", "-req", "-in", request, "-CA", pki.ca_cert, "-CAkey", pki.ca_key, "-CAcreateserial",
                 "-out", pki.serving_cert, "-days", "3650", "-extfile", extensions)
    if not pki.service_account_key.is_file():
        _openssl("genrsa", "-out", pki.service_account_key, "2048")
    if not pki.token_file.is_file():
        # token,user,uid,"group": the dev cluster's administrator (kubectl, the kubelet, the tests).
        pki.token_file.write_text(f'{secrets.token_hex(24)},m2f-dev-admin,m2f-dev-admin,"system:masters"\n')
        pki.token_file.chmod(0o600)
    return pki


def _openssl(*args) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise PkiError("the real control plane needs the openssl command (Debian: apt-get install openssl)")
    result = subprocess.run([binary, *map(str, args)], capture_output=True, text=True, check=False)
    if result.returncode:
        raise PkiError(f"openssl {args[0]} failed: {result.stderr.strip()}")
