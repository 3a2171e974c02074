"""Job states: Balsam's names, the directory each lives in, and which moves are legal.

The directory a record sits in is its coarse state and is authoritative; the record's
``state`` field (and its unmerged events) refine it to Balsam's finer names.

=================  ==============  ===============================================
directory          coarse state    finer Balsam states shown there
=================  ==============  ===============================================
jobs/created/      CREATED         CREATED (not yet validated by the site)
jobs/waiting/      AWAITING_PARENTS
jobs/stagein/      STAGING_IN      READY (Balsam's name): its inputs are being staged in
jobs/ready/        READY           READY, STAGED_IN, PREPROCESSED, RESTART_READY
jobs/running/L/    RUNNING         RUNNING, RUN_DONE, RUN_ERROR, RUN_TIMEOUT (in flight)
jobs/stageout/     POSTPROCESSED   POSTPROCESSED: outputs being staged out
jobs/done/         JOB_FINISHED    JOB_FINISHED, RUN_DONE, STAGED_OUT
jobs/failed/       FAILED          FAILED (the record says why, and which attempt),
                                   KILLED (stopped or cancelled by ``spool job kill``)
jobs/rejected/     REJECTED        not a job: a dropped file the site refused
=================  ==============  ===============================================

The two staging directories hold the jobs whose transfer items are moving
(``spoolbalsam.site.transfers``).  Launchers never list them, so a job waiting for its
inputs cannot be claimed, and a job waiting for its outputs to leave is not in ``done/``,
so its children are not released before its stage-out.  A job waiting for its inputs
keeps Balsam's state READY in its record and is shown as STAGING_IN, the state of its
directory (as a claimed job is shown RUNNING whatever its record says): every fine state
names one directory.  ``stagein/`` is written by the site only (CLI and API moves aside);
launchers rename a run job that has stage-out items into ``stageout/`` (as they rename
into ``done/``), and the site writes and moves it from there.  Both are sharded like
``ready/``.  ``spool job ls --state STAGING_IN`` (or ``stagein``) and ``--state
POSTPROCESSED`` (or ``stageout``) list them.
"""
from __future__ import annotations

CREATED = "CREATED"
AWAITING_PARENTS = "AWAITING_PARENTS"
STAGING_IN = "STAGING_IN"
READY = "READY"
STAGED_IN = "STAGED_IN"
PREPROCESSED = "PREPROCESSED"
RESTART_READY = "RESTART_READY"
RUNNING = "RUNNING"
RUN_DONE = "RUN_DONE"
RUN_ERROR = "RUN_ERROR"
RUN_TIMEOUT = "RUN_TIMEOUT"
POSTPROCESSED = "POSTPROCESSED"
STAGED_OUT = "STAGED_OUT"
JOB_FINISHED = "JOB_FINISHED"
FAILED = "FAILED"
REJECTED = "REJECTED"
KILLED = "KILLED"          # not Balsam's: a job stopped or cancelled on request (``kill``)

# directory name -> coarse state
DIR_STATE = {
    "created": CREATED,
    "waiting": AWAITING_PARENTS,
    "stagein": STAGING_IN,
    "ready": READY,
    "running": RUNNING,
    "stageout": POSTPROCESSED,
    "done": JOB_FINISHED,
    "failed": FAILED,
    "rejected": REJECTED,
}
STATE_DIR = {
    CREATED: "created",
    AWAITING_PARENTS: "waiting",
    STAGING_IN: "stagein",
    READY: "ready", STAGED_IN: "ready", PREPROCESSED: "ready", RESTART_READY: "ready",
    RUNNING: "running", RUN_DONE: "running", RUN_ERROR: "running", RUN_TIMEOUT: "running",
    POSTPROCESSED: "stageout", STAGED_OUT: "done", JOB_FINISHED: "done",
    FAILED: "failed",
    REJECTED: "rejected",
    KILLED: "failed",      # last, so the states before it keep their positions
}
ALL_STATES = tuple(STATE_DIR)
SHARDED_DIRS = ("waiting", "stagein", "ready", "stageout", "done", "failed")
STAGING_DIRS = ("stagein", "stageout")
TERMINAL_DIRS = ("done", "failed")
FINAL_STATES = (JOB_FINISHED, FAILED, KILLED)   # a launcher's last event for an attempt


def parse_state(text: str) -> tuple[str, str | None]:
    """``--state`` value -> (directory, fine state or None).

    Accepts Balsam's names in any case (``JOB_FINISHED``, ``run_error``) and the directory
    names (``ready``, ``done``); raises ValueError naming the accepted values.
    """
    t = text.strip()
    if t.lower() in DIR_STATE:
        return t.lower(), None
    up = t.upper()
    if up in STATE_DIR:
        return STATE_DIR[up], up
    raise ValueError(f"unknown state {text!r}; use one of {', '.join(ALL_STATES)} "
                     f"or a directory name ({', '.join(DIR_STATE)})")


def fine_state(directory: str, record_state: str | None) -> str:
    """The state to show for a record in ``directory`` whose content says ``record_state``."""
    if record_state and STATE_DIR.get(record_state) == directory:
        return record_state
    return DIR_STATE[directory]
