"""Crash-safe file primitives: every visible file appears whole or not at all.

Guarantees
----------
* ``write_atomic(path, data)`` writes ``data`` to a dot-temp in the same directory
  (``.NAME.HOST.PID.RAND``, created with O_EXCL), fsyncs it, renames it to ``path`` and
  fsyncs the directory.  A reader therefore sees the old file, the new file, or no file,
  never a torn one.  Visible files are never opened for writing.
* ``Batch`` groups many atomic writes: temps are written, *one* ``syncfs`` makes them all
  durable, then they are renamed and one more ``syncfs`` makes the renames durable.  The
  bulk paths (intake, bulk submit, merges) use it so a thousand records cost two syncs,
  not two thousand.
* ``Spares`` recycles files: a record a batch replaced is kept, privately, as the temp of a
  later record, so a steady stream of rewrites allocates and frees no inodes.  A spare is
  only ever written while no other name points at it, and its content is disposable.
* ``read_json(path)`` retries once on ENOENT/ESTALE or a half-read, because a concurrent
  rename can make a name briefly vanish on network filesystems; dot-files are never read
  by listings (see ``list_names``).
* ``AppendLog`` is a single-writer JSONL file: one ``os.write`` of a newline-terminated line
  per record on an O_APPEND descriptor.  Exactly one process ever appends to a given log
  (O_APPEND is not atomic on NFS); ``read_lines_from`` (and ``iter_lines``, which streams
  a whole log) drops a trailing partial line so a reader never sees half an event.
* Nothing here uses ``shutil.move``: on EXDEV it silently copies, which would turn a state
  change into a duplicate.  A cross-device rename is a configuration error and raises.
"""
from __future__ import annotations

import ctypes
import errno
import os
import secrets
import socket
import time
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator

import orjson

HOST = socket.gethostname()
_RETRY_ERRNOS = (errno.ENOENT, errno.ESTALE)

try:  # syncfs(2) flushes one filesystem; os.sync() would flush every mounted one.
    _libc = ctypes.CDLL(None, use_errno=True)
    _syncfs = _libc.syncfs
except (OSError, AttributeError):  # pragma: no cover - non-Linux
    _syncfs = None


def dumps(obj) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def loads(data: bytes):
    return orjson.loads(data)


def temp_name(path: Path) -> Path:
    """A dot-temp beside ``path`` that no other process can be using."""
    return path.with_name(f".{path.name}.{HOST}.{os.getpid()}.{secrets.token_hex(4)}")


def temp_writer(name: str) -> tuple[str, int] | None:
    """(host, pid) of the process that made the dot-temp ``name`` (see ``temp_name``), or
    None if ``name`` is not such a temp."""
    if not name.startswith("."):
        return None
    head, _, _rand = name.rpartition(".")
    head, _, pid = head.rpartition(".")
    if not pid.isdigit():
        return None
    for host in (HOST,):                 # host names may hold dots: try ours first
        if head.endswith("." + host):
            return host, int(pid)
    return head.rpartition(".")[2], int(pid)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Make everything written on the filesystem holding ``path`` durable (one call)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY if path.is_dir() else os.O_RDONLY)
    try:
        if _syncfs is None or _syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes, fsync: bool, make_parent: bool = True) -> Path:
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileNotFoundError:
        if not make_parent:
            raise
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quiet(tmp)
        raise
    os.close(fd)
    return tmp


def write_atomic(path: Path, data: bytes, *, durable: bool = True,
                 make_parent: bool = True) -> None:
    """Publish ``data`` at ``path`` whole.  ``durable=False`` skips the fsyncs (leases).

    ``make_parent=False``: a missing directory is a FileNotFoundError, never created --
    also when it is renamed away between the temp and its rename (a closed mailbox,
    ``spool.kills``)."""
    tmp = _write_temp(path, data, durable, make_parent)
    try:
        if make_parent:
            rename(tmp, path)
        else:
            os.rename(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def write_json_atomic(path: Path, obj, *, durable: bool = True, make_parent: bool = True) -> None:
    write_atomic(path, dumps(obj), durable=durable, make_parent=make_parent)


class Spares:
    """A directory of one process's old files, reused as the temps of new ones.

    Creating and deleting a file are the dearest metadata operations on most filesystems
    (an inode allocation; on Lustre a metadata-server round trip each; on ext4 without a
    journal, a scan past every recently freed inode of the group).  A process that rewrites
    records by the thousand -- the site merging verdicts -- keeps the files its rewrites
    replaced (``give``) and writes later records into them (``take`` + ``overwrite``)
    instead, as databases recycle their log files.

    Only the owner (one process, see the site's lock) touches the directory.  A spare has
    no other name (``overwrite`` checks), so writing into it never changes what a name
    shows; what it holds is disposable, and a crash leaves at most a half-written spare.

    # race: a reader may have opened a record just before it was replaced and read it
    # after its file was recycled.  The reader checks that the record it read is the one
    # named (``store.read_job``) and reads again after a torn one, which is what makes this
    # safe.  A spare also rests ``rest`` seconds before reuse, thousands of times the gap
    # between a reader's open and its read, so that such reads are rare; and ten ticks of
    # the file clock, so a recycled file's mtime always moves on (``store.same_file``).
    """

    def __init__(self, directory: Path, keep: int = 1024, rest: float = 0.1):
        self.directory = directory
        self.keep = keep
        self.rest = rest
        directory.mkdir(parents=True, exist_ok=True)
        now = time.monotonic()
        self.free = deque((directory / n, now) for n in os.listdir(directory))
        self.seq = secrets.randbits(32)

    def take(self) -> Path | None:
        """A spare that has rested, or None."""
        if self.free and self.free[0][1] + self.rest <= time.monotonic():
            return self.free.popleft()[0]
        return None

    def drain(self) -> None:
        """Delete every spare and the directory (the owner is leaving)."""
        for path, _ in self.free:
            _unlink_quiet(path)
        self.free.clear()
        try:
            os.rmdir(self.directory)
        except OSError:
            pass

    def give(self, path: Path) -> None:
        """Keep ``path`` (a file of ours that nothing else names any more) for reuse."""
        if len(self.free) >= self.keep:
            _unlink_quiet(path)
            return
        self.seq += 1
        dst = self.directory / f"{self.seq:x}"
        try:
            os.rename(path, dst)
        except OSError:
            _unlink_quiet(path)
            return
        self.free.append((dst, time.monotonic()))


def overwrite(path: Path, data: bytes) -> None:
    """Replace the whole content of a private file (a spare) in place: same inode, and the
    same data blocks when the size class does not change.  Refuses (OSError) a file with
    another name somewhere: someone may have hard-linked a record while it was visible."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        if os.fstat(fd).st_nlink != 1:
            raise OSError(errno.EMLINK, "a spare with another link is not private", str(path))
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


class Batch:
    """Group atomic writes under two filesystem syncs.

    ``add(path, data)`` writes the temp now; ``add_rename(src, path)`` will publish an
    existing complete file (one the caller holds privately) as it is; ``commit()`` syncs,
    renames all of them into place, syncs again.  A crash before ``commit`` leaves only
    dot-temps, which the site's sweeper removes, spares, and the held files where they were.
    With ``spares``, temps are recycled files and ``retire`` recycles replaced ones.
    """

    def __init__(self, anchor: Path, spares: Spares | None = None):
        self.anchor = anchor
        self.spares = spares
        self.pending: list[tuple[Path, Path]] = []
        self.moves: list[tuple[Path, Path]] = []
        self.after: list = []
        self.once: set[str] = set()
        self.held: dict[Path, tuple[Path, Path]] = {}   # dest -> (held copy, its old name)

    def after_commit(self, fn, once: str | None = None) -> None:
        """Run ``fn`` once the batch's renames are durable (e.g. drop a limbo copy);
        with ``once``, only the first ``fn`` registered under that key."""
        if once is not None:
            if once in self.once:
                return
            self.once.add(once)
        self.after.append(fn)

    def retire(self, path: Path) -> None:
        """Once the batch is durable, ``path`` (a private copy, e.g. in a limbo) is no
        longer needed: recycle it as a spare, or unlink it."""
        keep = self.spares.give if self.spares is not None else _unlink_quiet
        self.after.append(lambda: keep(path))

    def hold(self, path: Path, held: Path, src: Path) -> None:
        """The record to be published at ``path`` replaces one its mover holds at ``held``,
        renamed there from ``src`` (``Store.move_rewrite``): once ``path`` is published the
        held copy is retired; if it never is (``abort``, a failed ``commit``), the held
        copy goes back to ``src`` -- the mover still holds the job's only name."""
        self.held[path] = (held, src)

    def _retire_held(self, path: Path) -> None:
        got = self.held.pop(path, None)
        if got is not None:
            (self.spares.give if self.spares is not None else _unlink_quiet)(got[0])

    def add(self, path: Path, data: bytes) -> None:
        spare = self.spares.take() if self.spares is not None else None
        if spare is not None:
            try:
                overwrite(spare, data)
            except OSError:        # removed by hand, or another user's file: a fresh temp
                _unlink_quiet(spare)
                spare = None
        tmp = spare if spare is not None else _write_temp(path, data, fsync=False)
        self.pending.append((tmp, path))

    def add_json(self, path: Path, obj) -> None:
        self.add(path, dumps(obj))

    def add_rename(self, src: Path, path: Path) -> None:
        self.moves.append((src, path))

    def commit(self) -> None:
        """Publish everything; on failure (OSError, raised: a full disk) what was published
        stays, the rest is taken back as ``abort`` does, and the callbacks do not run.  (A
        crash, where no handler runs, leaves temps and limbo copies for the recovery.)"""
        if not self.pending and not self.moves:
            for fn in self.after:
                fn()
            self.after.clear()
            self.once.clear()
            return
        published: list[Path] = []
        try:
            sync_filesystem(self.anchor)
            while self.pending:
                tmp, path = self.pending[0]
                rename(tmp, path)
                self.pending.pop(0)
                published.append(path)
            while self.moves:
                rename(*self.moves[0])
                self.moves.pop(0)
            sync_filesystem(self.anchor)
        except OSError:
            # what was renamed is published: its held copies are no longer needed
            for path in published:
                self._retire_held(path)
            self.abort()
            raise
        for path in published:           # the held copies go only once the renames are durable
            self._retire_held(path)
        for fn in self.after:
            fn()
        self.after.clear()
        self.once.clear()

    def abort(self) -> None:
        """Take back what is not published: temps removed, held records back where they
        were, ``add_rename`` sources left where they are, no callback run."""
        for tmp, path in self.pending:
            _unlink_quiet(tmp)
        self.pending.clear()
        self.moves.clear()
        for path, (held, src) in self.held.items():
            rename_quiet(held, src)
        self.held.clear()
        self.after.clear()
        self.once.clear()


def rename(src: Path, dst: Path) -> None:
    """``os.rename`` that refuses to degrade into a copy (EXDEV is a setup error)."""
    try:
        os.rename(src, dst)
    except FileNotFoundError:
        if not dst.parent.exists() and Path(src).exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dst)
        else:
            raise
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise OSError(errno.EXDEV, f"{src} and {dst} are on different filesystems (or "
                          "Lustre project-quota boundaries); a spool must live on one") from e
        raise


def rename_quiet(src: Path, dst: Path) -> bool:
    """``rename`` that reports a lost race (ENOENT) as False instead of raising."""
    try:
        rename(src, dst)
        return True
    except FileNotFoundError:
        return False


def _read_once(path) -> tuple[bytes, os.stat_result]:
    """(content, stat) with four system calls: records are small and read whole."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        data = os.read(fd, st.st_size + 1)
        if len(data) != st.st_size:         # it grew or shrank since fstat: read to the end
            parts = [data]
            while parts[-1]:
                parts.append(os.read(fd, 1 << 16))
            data = b"".join(parts)
        return data, st
    finally:
        os.close(fd)


def _read(path, retry: bool) -> tuple[bytes, os.stat_result]:
    """(bytes, stat); with ``retry``, one more try 1 ms after ENOENT/ESTALE (a name that a
    rename is moving).  ``retry=False`` for files whose absence is the normal case."""
    try:
        return _read_once(path)
    except OSError as e:
        if not retry or e.errno not in _RETRY_ERRNOS:
            raise
        time.sleep(0.001)
        return _read_once(path)


def read_bytes(path: Path, retry: bool = True) -> bytes:
    return _read(path, retry)[0]


def read_json_stat(path, retry: bool = True) -> tuple[object, os.stat_result]:
    """A published JSON file and the stat of the file read; retry once on a vanished name
    or a torn read."""
    data, st = _read(path, retry)
    try:
        return orjson.loads(data), st
    except orjson.JSONDecodeError:
        time.sleep(0.001)
        data, st = _read(path, retry)
        return orjson.loads(data), st


def read_json(path: Path, retry: bool = True):
    return read_json_stat(path, retry)[0]


def list_names(directory: Path, suffix: str = ".json") -> list[str]:
    """Visible names in ``directory`` ending in ``suffix`` (dot-files skipped); [] if absent."""
    try:
        with os.scandir(directory) as it:
            return [e.name for e in it if e.name.endswith(suffix) and e.name[0] != "."]
    except FileNotFoundError:
        return []


def list_dirs(directory: Path) -> list[str]:
    try:
        with os.scandir(directory) as it:
            return [e.name for e in it if e.name[0] != "." and e.is_dir()]
    except FileNotFoundError:
        return []


def error_text(e: OSError) -> str:
    """``No space left on device: /site/jobs/x.json``: an OSError as one line for a log."""
    return f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


unlink_quiet = _unlink_quiet


class AppendLog:
    """The one writer of a JSONL log.  ``append`` buffers; ``flush`` writes and fsyncs."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.buf: list[bytes] = []
        # race: the previous writer of this log (the same site after a kill -9) may have
        # died in the middle of a line.  Our first line would be glued to that piece and
        # both would be lost to readers (a corrupt line is skipped); a newline ends it.
        size = os.fstat(self.fd).st_size
        if size and os.pread(self.fd, 1, size - 1) != b"\n":
            os.write(self.fd, b"\n")

    def append(self, event: dict) -> None:
        self.buf.append(orjson.dumps(event) + b"\n")

    def flush(self, *, durable: bool = True) -> None:
        """Write what is buffered (and fsync, if ``durable``).  On failure (a full disk)
        nothing of it stays in the file and all of it stays buffered for the next flush.

        # race: a reader may have consumed whole lines of a write that failed midway; the
        # next flush writes the very same bytes at the very same offset (we are the only
        # writer), so what it read stays true and its offset stays on a line boundary.
        """
        if not self.buf:
            return
        data = b"".join(self.buf)
        start = os.lseek(self.fd, 0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:
            try:
                os.ftruncate(self.fd, start)
            except OSError:
                pass
            self.buf = [data]
            raise
        self.buf.clear()
        if durable:
            os.fsync(self.fd)

    def sync(self) -> None:
        """Write what is buffered and make everything written so far durable."""
        self.flush(durable=False)
        os.fsync(self.fd)

    def close(self) -> None:
        self.flush()
        os.close(self.fd)


def read_lines_from(path: Path, offset: int) -> tuple[list[dict], int]:
    """Complete JSON lines of ``path`` after byte ``offset``; returns (events, new offset)."""
    lines, end = read_lines_at(path, offset)
    return [ev for ev, _ in lines], end


def read_lines_at(path: Path, offset: int) -> tuple[list[tuple[dict, int]], int]:
    """([(event, offset just past its line)], new offset) for the complete JSON lines of
    ``path`` after ``offset``.  A trailing line without its newline is left for next time
    (it is still being written); a corrupt complete line is skipped, never fatal."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    return parse_lines(data, offset)


def parse_lines(data: bytes, offset: int = 0) -> tuple[list[tuple[dict, int]], int]:
    """``read_lines_at`` of bytes already read (``data`` starts at byte ``offset``)."""
    out: list[tuple[dict, int]] = []
    pos = 0
    while (nl := data.find(b"\n", pos)) >= 0:
        line, pos = data[pos:nl], nl + 1
        if line:
            try:
                out.append((orjson.loads(line), offset + pos))
            except orjson.JSONDecodeError:
                continue
    return out, offset + pos


def iter_lines(path: Path) -> Iterator[dict]:
    """The events ``read_lines_from(path, 0)`` returns, streamed: the file is read a block
    at a time, so a reader that keeps only part of each event never holds the whole log
    (a 100 MB log parsed at once peaks near 800 MB)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if line[-1:] != b"\n":
                return                      # a trailing line still being written
            if len(line) > 1:
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue


def iter_json_files(directory: Path) -> Iterator[tuple[Path, dict]]:
    for name in list_names(directory):
        path = directory / name
        try:
            yield path, read_json(path)
        except (FileNotFoundError, orjson.JSONDecodeError):
            continue


def ensure_dirs(paths: Iterable[Path]) -> None:
    for p in paths:
        p.mkdir(parents=True, exist_ok=True)
