#!/usr/bin/env bash
# Builds a real Kubernetes control plane for the tests into DEST (default .tools/bin):
# kube-apiserver and kube-controller-manager v1.20.2 from Debian bookworm's `kubernetes`
# source package (upstream tree with vendor/) with Debian's Go 1.19, offline, and etcd from
# Debian's etcd-server. No download outside Debian's archive. Idempotent: a complete build
# (the stamp file) is kept; a partial one starts again.
#
# Needs (installed here with apt-get when missing, as root or with sudo):
#   golang-1.19-go etcd-server golang-github-modern-go-reflect2-dev rsync make
set -euo pipefail

DEST=${1:-.tools/bin}
WORK=${KUBE_BUILD_DIR:-.tools/kube-build}
VERSION=1.20.5+really1.20.2-1.1+deb12u1
STAMP="$DEST/.kube-control-plane-$VERSION"
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
STAMP="$DEST/.kube-control-plane-$VERSION"

if [ -f "$STAMP" ] && [ -x "$DEST/kube-apiserver" ] && [ -x "$DEST/kube-controller-manager" ] \
  && [ -x "$DEST/etcd" ]; then
  exit 0
fi

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
need=""
[ -x /usr/lib/go-1.19/bin/go ] || need="$need golang-1.19-go"
[ -x /usr/bin/etcd ] || need="$need etcd-server"
[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need="$need golang-github-modern-go-reflect2-dev"
command -v rsync >/dev/null || need="$need rsync"
command -v make >/dev/null || need="$need make"
if [ -n "$need" ]; then
  echo "control plane: installing Debian packages:$need"
  $SUDO apt-get update -qq
  # policy-rc.d keeps etcd-server's service from starting where the image allows it.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=300 $need >/dev/null
fi

rm -rf "$WORK"
mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial"
WORK=$(cd "$WORK" && pwd)
# A private apt configuration: deb-src lines without touching /etc/apt.
cat >"$WORK/apt/sources.list" <<EOF
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
EOF
APT_OPTS=(-o "Dir::Etc::SourceList=$WORK/apt/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
  -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache=$WORK/apt/cache"
  -o "APT::Sandbox::User=root")
echo "control plane: fetching the kubernetes $VERSION source package"
(cd "$WORK" && apt-get "${APT_OPTS[@]}" update -qq && \
  apt-get "${APT_OPTS[@]}" source --download-only -qq "kubernetes=$VERSION")
mkdir -p "$WORK/gopath/src/k8s.io"
tar -xzf "$WORK"/kubernetes_*.orig.tar.gz -C "$WORK"
SRC=$(find "$WORK" -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)
ln -s "$SRC" "$WORK/gopath/src/k8s.io/kubernetes"

# The vendored reflect2 v1.0.1 crashes (SIGSEGV) under Go >= 1.18 on the first custom object.
rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$SRC/vendor/github.com/modern-go/reflect2"
rm -f "$SRC/vendor/github.com/modern-go/reflect2/go.mod"

export PATH="/usr/lib/go-1.19/bin:$PATH"
export GOPATH="$WORK/gopath" GO111MODULE=off GOFLAGS="" GOCACHE="$WORK/gocache"
cd "$WORK/gopath/src/k8s.io/kubernetes"
echo "control plane: generating OpenAPI definitions"
make gen_openapi >"$WORK/gen_openapi.log" 2>&1 || { tail -40 "$WORK/gen_openapi.log"; exit 1; }
# The version the server reports (/version): the operator reads it to know what the server has.
LDFLAGS="-s -w"
for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version \
  k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
  LDFLAGS="$LDFLAGS -X $pkg.gitVersion=v1.20.2 -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
  LDFLAGS="$LDFLAGS -X $pkg.gitTreeState=clean"
done
for cmd in kube-apiserver kube-controller-manager; do
  echo "control plane: building $cmd (several minutes on 2 cores)"
  go build -ldflags "$LDFLAGS" -o "$DEST/$cmd.tmp" "./cmd/$cmd"
  mv "$DEST/$cmd.tmp" "$DEST/$cmd"
done
ln -sf /usr/bin/etcd "$DEST/etcd"
"$DEST/kube-apiserver" --version
cd /
rm -rf "$WORK"
touch "$STAMP"
