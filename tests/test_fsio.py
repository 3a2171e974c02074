"""fsio: atomic writes leave no temp behind, Batch commit/abort, single-writer JSONL logs."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spoolbalsam.spool import fsio


def visible(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if not n.startswith("."))


def hidden(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith("."))


# ---- write_atomic ------------------------------------------------------------------------
def test_write_atomic_publishes_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.json"
    fsio.write_atomic(p, b"one")
    fsio.write_atomic(p, b"two, longer")
    assert p.read_bytes() == b"two, longer"
    assert hidden(tmp_path) == []


def test_write_atomic_creates_missing_parent(tmp_path):
    p = tmp_path / "x" / "y" / "a.json"
    fsio.write_json_atomic(p, {"k": 1})
    assert fsio.read_json(p) == {"k": 1}
    assert hidden(p.parent) == []


def test_write_atomic_failure_in_write_leaves_no_temp_and_old_file(tmp_path):
    p = tmp_path / "a.json"
    fsio.write_atomic(p, b"old")
    with pytest.raises(TypeError):
        fsio.write_atomic(p, "not bytes")        # fails while writing the temp
    assert p.read_bytes() == b"old"
    assert hidden(tmp_path) == []


def test_write_atomic_failure_in_rename_leaves_no_temp(tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "inside").write_text("x")          # rename(file, non-empty dir) fails
    with pytest.raises(OSError):
        fsio.write_atomic(target, b"data")
    assert hidden(tmp_path) == []
    assert visible(target) == ["inside"]


def test_temp_names_are_dot_files_unique_per_call(tmp_path):
    names = {fsio.temp_name(tmp_path / "a.json").name for _ in range(200)}
    assert len(names) == 200
    assert all(n.startswith(".a.json.") for n in names)


# ---- rename refuses to become a copy --------------------------------------------------------
def test_rename_across_filesystems_raises_exdev_and_never_copies(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem to rename across")
    with tempfile.TemporaryDirectory(dir=shm) as d:
        src = Path(d) / "job.json"
        src.write_bytes(b"{}")
        dst = tmp_path / "job.json"
        with pytest.raises(OSError) as ei:
            fsio.rename(src, dst)
        assert ei.value.errno == errno.EXDEV
        assert "different filesystems" in str(ei.value)
        assert src.exists() and not dst.exists()


def test_rename_quiet_reports_lost_race(tmp_path):
    assert fsio.rename_quiet(tmp_path / "gone", tmp_path / "b") is False
    (tmp_path / "a").write_text("x")
    assert fsio.rename_quiet(tmp_path / "a", tmp_path / "sub" / "b") is True
    assert (tmp_path / "sub" / "b").read_text() == "x"


# ---- Batch -------------------------------------------------------------------------------
def test_batch_commit_publishes_all_then_runs_after_commit(tmp_path):
    b = fsio.Batch(tmp_path)
    ran = []
    for i in range(20):
        b.add_json(tmp_path / f"{i % 4}" / f"j{i}.json", {"i": i})
    b.after_commit(lambda: ran.append(len(list(tmp_path.rglob("j*.json")))))
    # before commit: only temps exist
    assert list(tmp_path.rglob("j*.json")) == []
    b.commit()
    assert ran == [20]
    for i in range(20):
        assert fsio.read_json(tmp_path / f"{i % 4}" / f"j{i}.json") == {"i": i}
    assert fsio.read_json(tmp_path / "0" / "j0.json") == {"i": 0}
    for d in tmp_path.iterdir():
        assert hidden(d) == []


def test_batch_abort_leaves_nothing(tmp_path):
    b = fsio.Batch(tmp_path)
    for i in range(5):
        b.add(tmp_path / f"j{i}.json", b"{}")
    assert len(hidden(tmp_path)) == 5
    b.abort()
    assert os.listdir(tmp_path) == []
    b.commit()                                    # nothing pending: a no-op
    assert os.listdir(tmp_path) == []


def test_empty_batch_commit_still_runs_callbacks(tmp_path):
    b = fsio.Batch(tmp_path)
    ran = []
    b.after_commit(lambda: ran.append(1))
    b.commit()
    assert ran == [1]


# ---- listings and reads ------------------------------------------------------------------
def test_list_names_skips_dot_files_and_other_suffixes(tmp_path):
    for n in ("a.json", ".a.json.tmp", ".b.json", "c.txt", "d.json"):
        (tmp_path / n).write_text("{}")
    assert sorted(fsio.list_names(tmp_path)) == ["a.json", "d.json"]
    assert fsio.list_names(tmp_path / "missing") == []


def test_read_json_raises_on_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        fsio.read_json(tmp_path / "nope.json")


# ---- AppendLog / read_lines_from ---------------------------------------------------------
def test_appendlog_roundtrip_and_offsets(tmp_path):
    p = tmp_path / "events.jsonl"
    log = fsio.AppendLog(p)
    for i in range(3):
        log.append({"i": i})
    assert p.read_bytes() == b""                 # buffered until flush
    log.flush()
    events, off = fsio.read_lines_from(p, 0)
    assert events == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert off == p.stat().st_size
    log.append({"i": 3})
    log.close()
    events, off2 = fsio.read_lines_from(p, off)
    assert events == [{"i": 3}] and off2 == p.stat().st_size
    assert fsio.read_lines_from(p, off2) == ([], off2)


def test_read_lines_from_drops_partial_trailing_line(tmp_path):
    p = tmp_path / "events.jsonl"
    p.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": 3')    # a writer mid-line
    events, off = fsio.read_lines_from(p, 0)
    assert events == [{"a": 1}, {"b": 2}]
    assert off == len(b'{"a": 1}\n{"b": 2}\n')
    with open(p, "ab") as f:                         # the line completes
        f.write(b"}\n")
    events, off2 = fsio.read_lines_from(p, off)
    assert events == [{"c": 3}]
    assert off2 == p.stat().st_size


def test_read_lines_from_skips_corrupt_complete_line_and_missing_file(tmp_path):
    p = tmp_path / "events.jsonl"
    p.write_bytes(b'{"a": 1}\nnot json\n{"b": 2}\n')
    events, off = fsio.read_lines_from(p, 0)
    assert events == [{"a": 1}, {"b": 2}] and off == p.stat().st_size
    assert fsio.read_lines_from(tmp_path / "none.jsonl", 7) == ([], 7)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=5), st.integers(-2**63, 2**63 - 1) | st.text(max_size=8),
                                max_size=3), max_size=8),
       st.data())
def test_reading_a_log_in_any_chunks_yields_each_event_once(events, data):
    """Whatever prefix of the file a reader sees, it never gets half an event, and reading
    on from its offset yields every event exactly once, in order."""
    blob = b"".join(orjson.dumps(e) + b"\n" for e in events)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=5)))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "e.jsonl"
        got, off = [], 0
        for cut in cuts + [len(blob)]:
            p.write_bytes(blob[:cut])
            new, off = fsio.read_lines_from(p, off)
            got += new
        assert got == events


def test_iter_lines_streams_what_read_lines_from_returns(tmp_path):
    p = tmp_path / "ev.jsonl"
    with open(p, "wb") as f:
        f.write(b'{"a": 1}\n\n{not json}\n{"b": 2}\n{"c": ')     # an empty line, a corrupt one, a torn tail
    assert list(fsio.iter_lines(p)) == fsio.read_lines_from(p, 0)[0] == [{"a": 1}, {"b": 2}]
    assert list(fsio.iter_lines(tmp_path / "none.jsonl")) == []


def test_appendlog_reopened_after_a_torn_line_starts_on_a_new_line(tmp_path):
    """Found by the kill soak's log check: a site killed mid-append left half a line, and
    the restarted site's first event was glued to it (one corrupt line: both lost)."""
    p = tmp_path / "events.jsonl"
    p.write_bytes(b'{"a": 1}\n{"b": ')
    log = fsio.AppendLog(p)
    log.append({"c": 3})
    log.close()
    assert fsio.read_lines_from(p, 0)[0] == [{"a": 1}, {"c": 3}]
    log = fsio.AppendLog(p)            # a whole last line gets nothing added
    log.close()
    assert p.read_bytes().endswith(b'{"c":3}\n') and b"\n\n" not in p.read_bytes()


def test_temp_writer_reads_host_and_pid_from_a_temp_name(tmp_path):
    name = fsio.temp_name(tmp_path / "x.json").name
    assert fsio.temp_writer(name) == (fsio.HOST, os.getpid())
    assert fsio.temp_writer(".x.json.node7.cluster.42.0badf00d") == ("cluster", 42)
    assert fsio.temp_writer("x.json") is None and fsio.temp_writer(".x.json.tmp") is None


def _enospc_after(monkeypatch, nbytes: int):
    """Make os.write write at most ``nbytes`` more bytes in all, then fail with ENOSPC."""
    import errno
    real = os.write
    left = [nbytes]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real(fd, bytes(data)[: left[0]])
        left[0] -= n
        return n
    monkeypatch.setattr(os, "write", write)


def test_an_appendlog_flush_on_a_full_disk_leaves_no_piece_and_keeps_its_events(tmp_path,
                                                                                monkeypatch):
    """Found by the disk-full soak: a flush that failed midway left half a line in the log
    (the next event glued to it: both lost to readers) and dropped the rest of its events."""
    p = tmp_path / "events.jsonl"
    log = fsio.AppendLog(p)
    log.append({"n": 1})
    log.flush()
    log.append({"n": 2, "pad": "x" * 100})
    log.append({"n": 3})
    _enospc_after(monkeypatch, 30)
    with pytest.raises(OSError):
        log.flush()
    monkeypatch.undo()
    assert p.read_bytes() == b'{"n":1}\n', "a failed flush must take back what it wrote"
    log.append({"n": 4})
    log.flush()
    assert [e["n"] for e in fsio.read_lines_from(p, 0)[0]] == [1, 2, 3, 4]


def test_a_batch_that_cannot_be_written_gives_every_held_record_back(tmp_path, monkeypatch):
    """Found by the disk-full soak: the site's merge renamed records into its limbo, then
    could not write their new versions; the jobs waited in the limbo until a restart."""
    from spoolbalsam.spool.layout import Layout
    from spoolbalsam.spool.store import Store
    lay = Layout(tmp_path / "S")
    lay.make()
    store = Store(lay)
    limbo = lay.site_dir / "limbo"
    for j in ("a", "b"):
        fsio.write_json_atomic(lay.job_path("done", j), {"id": j, "state": "RUN_DONE"})
    batch = fsio.Batch(lay.jobs)
    assert store.move_rewrite(lay.job_path("done", "a"), lay.job_path("done", "a"),
                              {"id": "a", "state": "JOB_FINISHED"}, limbo, batch)
    _enospc_after(monkeypatch, 10)
    with pytest.raises(OSError):
        store.move_rewrite(lay.job_path("done", "b"), lay.job_path("done", "b"),
                           {"id": "b", "state": "JOB_FINISHED"}, limbo, batch)
    monkeypatch.undo()
    batch.abort()
    for j in ("a", "b"):
        assert fsio.read_json(lay.job_path("done", j)) == {"id": j, "state": "RUN_DONE"}
    assert fsio.list_names(limbo) == [] and temps(lay.root / "jobs") == []


def test_a_batch_commit_that_fails_midway_keeps_what_it_published(tmp_path, monkeypatch):
    from spoolbalsam.spool.layout import Layout
    from spoolbalsam.spool.store import Store
    import errno
    lay = Layout(tmp_path / "S")
    lay.make()
    store = Store(lay)
    limbo = lay.site_dir / "limbo"
    batch = fsio.Batch(lay.jobs)
    for j in ("a", "b"):
        fsio.write_json_atomic(lay.job_path("ready", j), {"id": j, "v": 1})
        store.move_rewrite(lay.job_path("ready", j), lay.job_path("failed", j),
                           {"id": j, "v": 2}, limbo, batch)
    real, calls = fsio.rename, []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)
    monkeypatch.setattr(fsio, "rename", rename)
    with pytest.raises(OSError):
        batch.commit()
    monkeypatch.undo()
    assert fsio.read_json(lay.job_path("failed", "a")) == {"id": "a", "v": 2}
    assert fsio.read_json(lay.job_path("ready", "b")) == {"id": "b", "v": 1}
    assert not lay.job_path("failed", "b").exists() and not lay.job_path("ready", "a").exists()
    assert fsio.list_names(limbo) == [] and temps(lay.root / "jobs") == []


def temps(d):
    return [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs if f.startswith(".")]
