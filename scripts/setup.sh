#!/usr/bin/env bash
# Quick start, step 1: install everything turbok needs on Debian 12 (as root) and run
# the main job on the embedded default (a warm pool, a claim, a command in gVisor).
#
#   scripts/setup.sh            install + demo
#   scripts/setup.sh --install  install only (what scripts/test.sh and CI call)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
mode=${1:-demo}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/setup.sh installs Debian packages and runs gVisor: run it as root" >&2
  exit 1
fi

# --- Debian packages: gVisor, bubblewrap (fallback), the base-image builder, the test registry
#     (docker-registry; htpasswd from apache2-utils for its basic-auth tests; skopeo and umoci, the
#     references of bench/images.py), nftables (the pod network's rules).
packages=(runsc bubblewrap mmdebstrap docker-registry apache2-utils skopeo umoci iproute2 nftables python3 python3-venv
          python3-dev gcc ca-certificates)
command -v kubectl >/dev/null || packages+=(kubernetes-client)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The distribution starts docker-registry as a service; the tests start their own on loopback.
systemctl disable --now docker-registry >/dev/null 2>&1 || true

# Host limits that scale with the sandboxes (docs/node.md, "Host limits"; `turbok serve` warns at start
# about any still too low): an idle sandbox holds about 60 host tasks (the default pid_max, 32768, caps
# a machine near 490), the control plane one inotify watch per container log, and a sandbox's Sentry
# can map guest memory in tens of thousands of regions. Not persisted: a reboot restores the kernel's
# defaults (run this again, or put the same lines in /etc/sysctl.d/90-turbok.conf).
for setting in kernel.pid_max=4194304 kernel.threads-max=4194304 fs.inotify.max_user_watches=524288 \
               fs.inotify.max_user_instances=512 vm.max_map_count=262144; do
  knob=${setting%%=*} want=${setting#*=}
  have=$(sysctl -n "$knob" 2>/dev/null || echo 0)
  if [ "$have" -lt "$want" ] && ! sysctl -qw "$setting" 2>/dev/null; then
    echo "note: could not raise $knob from $have to $want (a container without the right?): as root on the host, sysctl -w $setting" >&2
  fi
done
# Open files: `turbok serve` raises its soft limit to the hard one itself; a hard limit under 65536 caps it.
[ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge 65536 ] \
  || echo "note: the hard open-files limit is $(ulimit -Hn): raise it (LimitNOFILE= in a unit, limits.conf) for many sandboxes" >&2

# --- Python: a virtual environment in .venv with turbok and its test tools.
if [ ! -x .venv/bin/python ]; then
  say "creating the Python virtual environment in .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import turbok, pytest, torch, kubernetes" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.turbok-installed ]; then
  say "installing turbok and its dependencies into .venv (torch CPU build, jax, test tools)"
  .venv/bin/pip install -q --disable-pip-version-check -U pip wheel
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
  touch .venv/.turbok-installed
fi

# --- The built-in base image (a read-only Debian userland with Python 3), shared by every home.
export TURBOK_IMAGES=${TURBOK_IMAGES:-$HOME/.turbok/images}
if ! .venv/bin/turbok image ls -o json 2>/dev/null | grep -q '"built": true'; then
  say "building the built-in base image into $TURBOK_IMAGES (a minute or two, once)"
  .venv/bin/turbok image build-base
fi

[ "$mode" = "--install" ] && exit 0

# --- The main job: the embedded control plane, a warm pool, a claim, a command in gVisor.
say "starting the embedded control plane"
.venv/bin/turbok up
export KUBECONFIG=${TURBOK_HOME:-$HOME/.turbok}/kubeconfig
say "applying a SandboxTemplate, a SandboxWarmPool and a SandboxClaim (examples/)"
.venv/bin/turbok apply -f examples/python-template.yaml -f examples/python-pool.yaml -f examples/my-claim.yaml
kubectl wait sandboxclaim/my-claim --for=condition=Ready --timeout=120s
say "running python3 inside the claimed sandbox (gVisor)"
.venv/bin/turbok sandbox exec my-claim -- python3 -c 'import platform; print(6*7, "from kernel", platform.release())'
say "done: kubectl --kubeconfig $KUBECONFIG get sandboxclaims,sandboxes,sandboxwarmpools"
kubectl get sandboxclaims,sandboxes,sandboxwarmpools
