#!/usr/bin/env bash
# The demo campaign on the built-in "local" machine (no scheduler, no server): makes .venv,
# installs spoolbalsam, creates the site ./demo-site with a 12-"tile" local node, runs the
# Aurora guide's seed campaign (demo/balsam_job_ensemble.py with only the import line
# changed: an EchoHello app, 24 single-tile jobs packed 12 per node, plus one 12-rank job),
# starts the site, asks for a 1-node serial batch job, waits, and prints where things are.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv .venv; }
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
PYTHONWARNINGS=ignore .venv/bin/pip install -q -e . mpich   # mpich: mpiexec for the 12-rank job
export PATH="$PWD/.venv/bin:$PATH"
exec python demo/campaign.py "$@"
