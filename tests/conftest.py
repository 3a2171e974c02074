"""Fixtures for the spool, site, intake and local-launcher tests.

NOTE: tests that need Slurm or MPI use the fixtures in ``tests/sched_fixtures.py`` (owned by
another engineer); this file only provides local, scheduler-free sites.

* ``site``: a fresh site made by the CLI exactly as a user would
  (``spool site init S --machine local --gpus 12 --cpus 4``) with three apps:
  ``EchoHello`` (prints its gpu ids), ``Fail`` (prints a line, exits 3; retry errors: 2)
  and ``Sleep`` (``sleep {{ secs }}``).  Its teardown kills, by PID, every process that
  belongs to the site (site process, launchers, batch scripts, jobs), so a failing test
  never leaves ``sleep 30`` behind.
* ``running_site``: the same site with ``spool site start`` done; stopped in teardown.

Helpers (``wait_for`` and friends) live in ``tests/helpers.py``.
"""
from __future__ import annotations

import signal

import pytest

from helpers import make_site, reap_site_processes, start_site, stop_site

# A suite started in the background of a non-interactive shell (`./run-tests.sh &`) has
# SIGINT ignored, and every process it starts would inherit that; the tests that press
# Ctrl-C on a command need the default, which a handler here gives its children.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def site(tmp_path):
    root = make_site(tmp_path / "S")
    try:
        yield root
    finally:
        reap_site_processes(root)


@pytest.fixture
def running_site(site):
    start_site(site)
    try:
        yield site
    finally:
        stop_site(site)
        reap_site_processes(site)
