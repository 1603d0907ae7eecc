#!/bin/sh
# System packages forge_ray wants: bubblewrap (bwrap) for the environments' sandbox
# (forge_ray/env/sandbox.py). Installs it with apt-get when running as root and it is
# missing. Never fails: without bwrap, forge_ray falls back to the unisolated 'process'
# sandbox backend and says so loudly.
if command -v bwrap >/dev/null 2>&1; then
    exit 0
fi
warn() {
    echo "WARNING: bubblewrap (bwrap) is not installed ($1); environments will run untrusted code" \
         "with the 'process' sandbox backend: rlimits and timeouts only, NO filesystem or network isolation." >&2
}
if [ "$(id -u)" != "0" ]; then
    warn "not root; install it with: sudo apt-get install bubblewrap"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    warn "no apt-get here; install the 'bubblewrap' package with this system's package manager"
    exit 0
fi
echo "installing bubblewrap (apt-get)..."
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq bubblewrap >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq bubblewrap >/dev/null 2>&1 || true
fi
if command -v bwrap >/dev/null 2>&1; then
    echo "bubblewrap installed: $(bwrap --version)"
else
    warn "apt-get install bubblewrap failed"
fi
exit 0
