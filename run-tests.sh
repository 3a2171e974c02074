#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian machine: makes .venv, installs the project
# with its test extras and MPICH (PyPI wheel: mpiexec lands in .venv/bin), and -- as root
# -- installs and starts a throw-away Slurm with emulated nodes n1..n4 on this host for the
# scheduler tests, stopping it afterwards. Without root the Slurm tests are skipped
# (in CI, with CI=true, a missing Slurm or MPI fails them instead). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv .venv; }
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
PYTHONWARNINGS=ignore .venv/bin/pip install -q -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"
# Tests create many sites; keep them out of the user's registry of known sites.
export SPOOL_REGISTRY="${SPOOL_REGISTRY:-$(mktemp -d)/sites.json}"
started_slurm=0
if [ "$(id -u)" = 0 ]; then
  command -v gcc >/dev/null || { apt-get update -qq && apt-get install -y -qq gcc >/dev/null; }
  command -v rsync >/dev/null || { apt-get update -qq && apt-get install -y -qq rsync >/dev/null; }
  bash tests/infra/slurm-up.sh 4 && started_slurm=1
fi
cleanup() { [ "$started_slurm" = 1 ] && bash tests/infra/slurm-down.sh >/dev/null 2>&1 || true; }
trap cleanup EXIT
python -m pytest -q "$@"
