"""Noticing change: the mode follows the filesystem type (fake /proc/mounts), a setting forces
it, and a polling site still takes in what is dropped."""
from __future__ import annotations

import re
import time

import pytest

from spoolbalsam.site.watch import NETWORK_FS, choose_mode, filesystem_type

from helpers import drop, edit_settings, job, locate, start_site, stop_site, wait_for

MOUNTS = """\
overlay / overlay rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/sda1 /home ext4 rw,relatime 0 0
/dev/sdb1 /scratch xfs rw,relatime 0 0
tmpfs /dev/shm tmpfs rw 0 0
fs1:/export/home /home/nfsuser nfs rw,vers=3 0 0
fs2:/proj /nfs4proj nfs4 rw,vers=4.2 0 0
10.1.1.1@o2ib:/flare /lus/flare lustre rw,flock 0 0
fs0 /gpfs/alpine gpfs rw 0 0
dfuse /daos/proj fuse.dfuse rw,nosuid,nodev 0 0
/dev/sdc1 /lus/flare/local-cache ext4 rw 0 0
/dev/sdd1 /mnt/with\\040space ext4 rw 0 0
"""


@pytest.mark.parametrize("path, fstype, mode", [
    ("/home/alice/site", "ext4", "inotify"),
    ("/scratch/site", "xfs", "inotify"),
    ("/dev/shm/site", "tmpfs", "inotify"),
    ("/var/site", "overlay", "inotify"),
    ("/home/nfsuser/site", "nfs", "poll"),          # longest mount point wins over /home
    ("/nfs4proj/site", "nfs4", "poll"),
    ("/lus/flare/projects/p/site", "lustre", "poll"),
    ("/gpfs/alpine/proj/site", "gpfs", "poll"),
    ("/daos/proj/site", "fuse.dfuse", "poll"),
    ("/lus/flare/local-cache/site", "ext4", "inotify"),  # a local fs mounted inside Lustre
    ("/lus/flarefoo/site", "overlay", "inotify"),   # a prefix that is not a path component
    ("/mnt/with space/site", "ext4", "inotify"),
])
def test_mode_follows_the_filesystem_type(path, fstype, mode):
    assert filesystem_type(path, MOUNTS) == fstype
    assert choose_mode(path, "auto", MOUNTS) == mode


@pytest.mark.parametrize("setting", ["inotify", "poll"])
def test_a_setting_forces_the_mode(setting):
    for path in ("/home/alice/site", "/lus/flare/projects/p/site"):
        assert choose_mode(path, setting, MOUNTS) == setting


def test_daos_and_other_network_filesystems_poll():
    for fs in ("fuse.daos", "dfuse", "beegfs", "cifs", "ceph"):
        assert fs in NETWORK_FS


def test_the_last_mount_on_a_mount_point_is_the_one_that_counts():
    mounts = ("overlay / overlay rw 0 0\n"
              "/etc/auto.direct /projects autofs rw,fd=7,direct 0 0\n"
              "fs3:/projects /projects nfs4 rw,vers=4.2 0 0\n")
    assert filesystem_type("/projects/p/site", mounts) == "nfs4"
    assert choose_mode("/projects/p/site", "auto", mounts) == "poll"


def test_unreadable_mounts_are_unknown_and_watched_with_inotify():
    assert filesystem_type("/x", "") == "unknown"
    assert choose_mode("/x", "auto", "") == "inotify"


def _site_mode(site) -> str:
    """The mode the site process says it chose (its log line follows its pid file)."""
    def said():
        try:
            return re.findall(r"watch=(\w+)", (site / "log" / "site.log").read_text())
        except FileNotFoundError:
            return []
    return wait_for(said, 10, "the site's start-up log line")[-1]


def test_a_polling_site_takes_in_dropped_files(site):
    edit_settings(site, {"watch": "poll", "poll_interval_sec": 0.2})
    start_site(site)
    try:
        assert _site_mode(site) == "poll"
        t0 = time.monotonic()
        for i in range(5):
            drop(site, f"p{i}.json", job(workdir=f"poll/{i}"))
        wait_for(lambda: all(locate(site, f"p{i}") == "ready" for i in range(5)), 10,
                 "dropped files taken in by polling")
        assert time.monotonic() - t0 < 5
    finally:
        stop_site(site)


def test_the_site_uses_inotify_on_a_local_filesystem(running_site):
    assert _site_mode(running_site) == choose_mode(running_site, "auto")
    drop(running_site, "i0.json", job(workdir="inotify/0"))
    wait_for(lambda: locate(running_site, "i0") == "ready", 10, "taken in")
