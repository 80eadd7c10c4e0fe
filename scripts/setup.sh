#!/usr/bin/env bash
# Idempotent set-up: Debian packages Manim needs, .venv, the project (editable, dev extras).
# A second run only checks and takes seconds. Environment:
#   TORCH_SPEC   torch requirement for the venv (default torch==2.13.0, the CPU wheel);
#                GPU users: install your CUDA torch into .venv first and it is kept.
#   SKIP_APT=1   do not touch system packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
APT_PACKAGES=(libcairo2-dev libpango1.0-dev pkg-config texlive-latex-base texlive-latex-recommended
              texlive-latex-extra texlive-fonts-recommended dvisvgm bubblewrap libseccomp2
              chromium)  # chromium: the browser tests of the gallery and the serve page

missing_packages() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  echo "${missing[@]:-}"
}

if [[ "${SKIP_APT:-0}" != 1 ]] && command -v dpkg-query >/dev/null; then
  missing=$(missing_packages)
  if [[ -n "$missing" ]]; then
    echo "setup: installing Debian packages: $missing"
    if [[ $(id -u) == 0 ]]; then
      apt_cmd=(env DEBIAN_FRONTEND=noninteractive)
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      apt_cmd=(sudo env DEBIAN_FRONTEND=noninteractive)
    else
      echo "setup: error: cannot install system packages without root; run:" >&2
      echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends $missing" >&2
      echo "  then run make setup again (or SKIP_APT=1 make setup to go on without them)" >&2
      exit 1
    fi
    "${apt_cmd[@]}" apt-get update -qq
    # shellcheck disable=SC2086
    "${apt_cmd[@]}" apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.derivanim-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat $stamp) == "$want" ]] && .venv/bin/python -c "import derivative_animator, torch, manim" 2>/dev/null; then
  echo "setup: up to date"
  exit 0
fi

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC"
  .venv/bin/pip install -q "$TORCH_SPEC"
fi
echo "setup: installing the project and its dependencies (about 2 minutes the first time)"
.venv/bin/pip install -q -e '.[dev]'
echo "$want" > $stamp
echo "setup: done"
