#!/usr/bin/env bash
# Build turbok's built-in base image (Debian bookworm minbase + python3, ~180 MB, ~40 s)
# into $TURBOK_IMAGES (default ~/.turbok/images). Needs root and a Debian mirror.
# Idempotent: does nothing when the image is already built (pass --force to rebuild;
# stop every sandbox first). Called by scripts/setup.sh; same as `turbok image build-base`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mmdebstrap >/dev/null; then
    apt-get install -y mmdebstrap
fi
exec .venv/bin/python - "$@" <<'PY'
import sys
from turbok.runtime.base_image import base_image_info, build_base_image
from turbok.runtime.images import ImageStore

store = ImageStore()
rootfs = build_base_image(store, force="--force" in sys.argv[1:], on_line=lambda line: print(line, flush=True))
print(f"base image: {rootfs} {base_image_info(store)}")
PY
