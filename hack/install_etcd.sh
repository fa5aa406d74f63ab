#!/usr/bin/env bash
# etcd for the real control plane (`m2f dev up --control-plane real`, the real-backend tests): Debian's
# etcd-server. The kube-apiserver, controller-manager and scheduler binaries come from shared/kube/ at run time
# (m2f_devcluster/controlplane/binaries.py). Without root or apt, say how and carry on: the tests that need it
# skip with that reason.
set -euo pipefail
if command -v etcd >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: etcd is not installed and this is not a root Debian machine; install etcd-server for the real control plane" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq etcd-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null; }
# The package may start a system etcd where an init system runs; the dev cluster starts its own on free ports.
command -v etcd
