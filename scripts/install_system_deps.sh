#!/bin/sh
# System packages forge_ray wants, installed with apt-get when running as root:
#   bubblewrap     bwrap, the environments' sandbox (forge_ray/env/sandbox.py)
#   git            workspaces of the SWE environment (envs/swe) and its submissions
#   python3-pytest the Python and pytest that run tests INSIDE the sandbox (/usr/bin/python3
#                  -m pytest): the SWE and coding-exercise environments' rewards
# Never fails: without bwrap, forge_ray falls back to the unisolated 'process' sandbox backend
# and says so loudly; without python3-pytest the coding environments' tests cannot run, and
# their task factories and tests say so.
missing=""
command -v bwrap >/dev/null 2>&1 || missing="$missing bubblewrap"
command -v git >/dev/null 2>&1 || missing="$missing git"
/usr/bin/python3 -c "import pytest" >/dev/null 2>&1 || missing="$missing python3-pytest"
if [ -z "$missing" ]; then
    exit 0
fi
warn() {
    echo "WARNING: could not install$missing ($1). Without bubblewrap, environments run untrusted code" \
         "with the 'process' sandbox backend: rlimits and timeouts only, NO filesystem or network isolation;" \
         "without git and python3-pytest the SWE and coding-exercise environments cannot run tests." >&2
}
if [ "$(id -u)" != "0" ]; then
    warn "not root; install them with: sudo apt-get install$missing"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    warn "no apt-get here; install them with this system's package manager"
    exit 0
fi
echo "installing$missing (apt-get)..."
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
if ! apt-get install -y -qq $missing >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq $missing >/dev/null 2>&1 || true
fi
if command -v bwrap >/dev/null 2>&1 && command -v git >/dev/null 2>&1 && /usr/bin/python3 -c "import pytest" >/dev/null 2>&1; then
    echo "installed:$missing"
else
    warn "apt-get install failed"
fi
exit 0
