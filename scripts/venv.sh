# Sourced by main.sh and test.sh: create .venv if needed and install grulm (and extras) into it.
# Usage: source scripts/venv.sh [EXTRAS]   e.g. EXTRAS=test
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: this machine kind carries the 2.13.0 CPU wheel; an unpinned
# requirement could pull a multi-GB CUDA build instead.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==2.13.0"
extras="${1:-}"
.venv/bin/pip install -q -e ".${extras:+[$extras]}"
# The corpora live beside the project in this workplace; elsewhere they are downloaded once.
if [ -d "$root/../shared/data" ]; then
  export GRULM_DATA_PATH="$(cd "$root/../shared/data" && pwd)${GRULM_DATA_PATH:+:$GRULM_DATA_PATH}"
fi
export PATH="$root/.venv/bin:$PATH"
