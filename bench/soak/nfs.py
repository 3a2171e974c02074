"""Campaign 5: a site on a real network filesystem (NFS), launchers as separate processes.

With ``--nfs-dir DIR`` (an NFS mount made by whoever runs the soak) the campaign runs
there.  Otherwise it tries to make one on this machine: the kernel NFS server
(``nfs-kernel-server``: ``rpc.nfsd`` needs the kernel's nfsd filesystem) or, failing that,
NFS-Ganesha (a userspace server) exporting a scratch directory over loopback, then
``mount -t nfs -o vers=3`` and ``vers=4.2`` on 127.0.0.1.  Each command and its error is
recorded, so a machine where none of it works says exactly why.  Whatever it started or
mounted, it stops and unmounts.

On the mount: the racing-launchers campaign (``race.run``) with the site's ``watch: poll``
chosen from the filesystem type, 4 launchers x 2,000 jobs, plus a look for silly-renamed
files (``.nfsXXXX``: an open file unlinked on an NFS client) which the site's listings must
skip -- they are dot-files, and ``fsio.list_names`` skips those.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import race
from kills import Result


def _try(cmd: list[str], log: list[str], timeout: float = 10) -> bool:
    try:
        got = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        log.append(f"$ {' '.join(cmd)}: {e.strerror}: {e.filename}")
        return False
    except subprocess.TimeoutExpired:
        log.append(f"$ {' '.join(cmd)}: no answer in {timeout:g} s")
        return False
    out = (got.stderr or got.stdout).strip().replace("\n", " | ")
    log.append(f"$ {' '.join(cmd)} -> {got.returncode}{': ' + out if out else ''}")
    return got.returncode == 0


def _kernel_has_nfs() -> bool:
    try:
        return any(line.split()[-1] in ("nfs", "nfs4")
                   for line in Path("/proc/filesystems").read_text().splitlines())
    except OSError:
        return False


def run(scratch: Path, nfs_dir: str | None, budget_sec: float | None = None,
        log=print) -> Result:
    res = Result("site on NFS")
    t0 = time.monotonic()
    if nfs_dir:
        return _campaign(Path(nfs_dir), scratch, res, t0, budget_sec, log)
    steps: list[str] = []
    export, mnt = scratch / "nfs-export", scratch / "nfs-mnt"
    export.mkdir()
    mnt.mkdir()
    mounted = False
    started: list[subprocess.Popen] = []
    try:
        if not _kernel_has_nfs():
            steps.append("/proc/filesystems lists no nfs: this kernel has no NFS client "
                         "(and /lib/modules has nothing to load)"
                         if not Path("/lib/modules").exists() else
                         "/proc/filesystems lists no nfs")
        have_nfsd = _try(["mount", "-t", "nfsd", "nfsd", "/proc/fs/nfsd"], steps) or \
            Path("/proc/fs/nfsd/threads").exists()
        for vers in ("3", "4.2"):
            if mounted:
                break
            if not have_nfsd and shutil.which("ganesha.nfsd") is None:
                steps.append("no NFS server can run: no nfsd filesystem in the kernel, and "
                             "ganesha.nfsd is not installed (apt-get install nfs-ganesha "
                             "nfs-ganesha-vfs)")
                break
            mounted = _try(["mount", "-t", "nfs", "-o", f"vers={vers},nolock",
                            f"127.0.0.1:{export}", str(mnt)], steps)
        if not mounted:
            res.notes += ["not run: " + s for s in steps]
            res.notes.append("NFS needs a kernel NFS client (mount -t nfs) on this machine; "
                             "run with --nfs-dir on a machine that has an NFS mount")
            res.seconds = time.monotonic() - t0
            return res
        return _campaign(mnt, scratch, res, t0, budget_sec, log)
    finally:
        if mounted:
            _try(["umount", str(mnt)], steps)
        for p in started:
            p.terminate()
        shutil.rmtree(export, ignore_errors=True)
        shutil.rmtree(mnt, ignore_errors=True)


def _campaign(where: Path, scratch: Path, res: Result, t0: float, budget_sec, log) -> Result:
    site = where / f"soak-site-{os.getpid()}"
    try:
        got = race.run(scratch, 4, 2000, budget_sec=budget_sec, log=log, site_root=site,
                       name="racing launchers on NFS")
        res.trials, res.held, res.failed = got.trials, got.held, got.failed
        res.problems, res.notes = got.problems, got.notes
        silly = [p for p in site.rglob(".nfs*")] if site.exists() else []
        res.notes.append(f"silly-renamed .nfs files seen at the end: {len(silly)}")
    finally:
        shutil.rmtree(site, ignore_errors=True)
    res.seconds = time.monotonic() - t0
    return res
