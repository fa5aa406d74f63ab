#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and kube-scheduler v1.20.2 from Debian's `kubernetes` source
# package into OUT_DIR: the dev cluster's last resort when neither M2F_KUBE_BIN_DIR nor the release tarball
# in shared/kube/ is there (m2f_devcluster/controlplane/binaries.py). Needs root (apt) and ~5 min on 2 cores.
#
# What the source package needs to build with the Go it ships with:
#  - GOPATH mode (the tree predates modules in Debian's packaging);
#  - the vendored reflect2 1.0.1 crashes under Go >= 1.18: Debian's packaged reflect2 (>= 1.0.2) replaces it;
#  - the release tarball leaves out the generated OpenAPI definitions: openapi-gen writes them first.
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUT_DIR}")
scratch=$(mktemp -d /tmp/m2f-kube-build.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$out"

enable_source_packages() {
  local list
  for list in /etc/apt/sources.list.d/*.sources; do
    [ -e "$list" ] || continue
    if grep -q '^Types: deb$' "$list" && [ ! -e "${list%.sources}-src.sources" ]; then
      sed 's/^Types: deb$/Types: deb-src/' "$list" > "${list%.sources}-src.sources"
    fi
  done
}

enable_source_packages
apt-get update -qq
apt-get install -y -qq golang-go golang-github-modern-go-reflect2-dev >/dev/null
(cd "$scratch" && apt-get source --download-only kubernetes >/dev/null && tar xzf kubernetes_*.orig.tar.gz)
tree=$(find "$scratch" -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)
rm -rf "$tree/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod"

export GO111MODULE=off CGO_ENABLED=0 GOPATH="$scratch/gopath" GOCACHE="$scratch/gocache"
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$tree" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

# Generated OpenAPI definitions for every package that asks for them.
go build -o "$scratch/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
inputs=$(grep -rl --include='*.go' -e '^// *+k8s:openapi-gen=' pkg staging/src/k8s.io \
  | grep -v -E 'code-generator|sample-apiserver|_test\.go' | xargs -n1 dirname | LC_ALL=C sort -u \
  | sed -e 's#^staging/src/k8s.io/#k8s.io/kubernetes/vendor/k8s.io/#' -e 's#^pkg/#k8s.io/kubernetes/pkg/#' \
  | paste -sd, -)
"$scratch/openapi-gen" -i "$inputs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
  -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$scratch/api-violations.report"

version_flags="-s -w"
for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  version_flags+=" -X $pkg.gitVersion=v1.20.2 -X $pkg.gitMajor=1 -X $pkg.gitMinor=20 -X $pkg.gitTreeState=clean"
done
for binary in kube-apiserver kube-controller-manager kube-scheduler; do
  go build -trimpath -ldflags "$version_flags" -o "$out/$binary" "k8s.io/kubernetes/cmd/$binary"
done
echo "built $(ls "$out" | tr '\n' ' ')into $out"
