"""Atomic outputs: write to a temporary sibling, rename into place only when complete."""

from __future__ import annotations

import contextlib
import functools
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from ..errors import OutputError

TMP_MARK = ".slmctl-tmp-"


def check_output(path: Path, force: bool) -> None:
    """Refuse an output that exists (without force) or that is a symlink."""
    if path.is_symlink():
        raise OutputError(
            f"output {path} is a symbolic link; slmctl does not write through links",
            hint="pass a plain path, or remove the link first",
        )
    if path.exists() and not force:
        raise OutputError(f"output {path} already exists", hint="pass --force to overwrite it")
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"output folder {parent} does not exist", hint=f"create it: mkdir -p {parent}")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def clean_stale_temps(path: Path) -> None:
    """Remove temporaries that an interrupted run left beside ``path`` (owner process gone)."""
    parent = path.parent
    if not parent.is_dir():
        return
    prefix = f".{path.name}{TMP_MARK}"
    for p in parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        try:
            pid = int(p.name[len(prefix):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            if "-old-" in p.name and not path.exists() and not path.is_symlink():
                # a --force run died between moving the previous output aside and renaming the new
                # one in: the previous output is complete, so put it back rather than lose it
                try:
                    os.rename(p, path)
                    continue
                except OSError:
                    pass
            _remove(p)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def disk_full_error(path: Path, exc: OSError) -> OutputError:
    return OutputError(
        f"no space left on the device holding {path.parent} while writing {path.name}",
        hint="free some space or choose another output location; nothing was left behind",
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, force: bool = False, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` when the block succeeds.

    On any failure (including KeyboardInterrupt) the temporary is removed and ``path`` is untouched.
    """
    path = Path(path)
    clean_stale_temps(path)  # first: it may put back an output that a killed --force run moved aside
    check_output(path, force)
    tmp = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"nothing was written for {path}")
        _commit(tmp, path, force)
    except OSError as exc:
        _remove(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full_error(path, exc) from exc
        raise
    except BaseException:
        _remove(tmp)
        raise


def _commit(tmp: Path, path: Path, force: bool) -> None:
    if tmp.is_dir():
        if path.exists() or path.is_symlink():
            if not force:
                raise OutputError(f"output {path} appeared while slmctl was writing it", hint="pass --force to overwrite it")
            # move the old output aside first so the swap is a pair of renames
            old = path.parent / f".{path.name}{TMP_MARK}{os.getpid()}-old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            os.rename(tmp, path)
            _remove(old)
        else:
            try:
                os.rename(tmp, path)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise OutputError(f"output {path} appeared while slmctl was writing it",
                                      hint="another run wrote it first; pass --force to overwrite it") from exc
                raise
    else:
        if not force:
            # link() fails if the name exists: the first of two concurrent writers wins
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise OutputError(f"output {path} appeared while slmctl was writing it",
                                  hint="another run wrote it first; pass --force to overwrite it") from exc
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_provenance_file(path: Path, prov: dict) -> None:
    """slmctl.json (or OUT.slmctl.json): written to a temporary sibling and renamed, so it is never
    partial and a symlink planted at its name is replaced, not followed."""
    import datetime
    import json

    doc = dict(prov)
    doc["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    tmp = path.parent / f".{path.name}.slmctl-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "x") as f:
            f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


WRITEBACK_BYTES = 64 << 20  # a big output's pages are handed to the disk every this many bytes


@functools.cache
def _sync_file_range():
    """libc's ``sync_file_range`` (Linux), or None."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def start_writeback(f, start: int, end: int) -> None:
    """Start writing bytes ``start..end`` of the open file ``f`` to disk, without waiting (Linux's
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; elsewhere nothing). A writer that calls this as it goes keeps
    the disk busy while it converts, so the fsync before the rename finds little left to write: on a disk that
    takes 10 s for a 3 GB file, an fsync at the end alone adds those seconds to the run. Python's buffer is
    flushed first. ``SLMCTL_WRITEBACK=0`` turns it off."""
    if end <= start or os.environ.get("SLMCTL_WRITEBACK", "1") == "0":
        return
    fn = _sync_file_range()
    if fn is None:
        return
    f.flush()
    fn(f.fileno(), start, end - start, 2)  # SYNC_FILE_RANGE_WRITE; a failure only loses the head start


class Writeback:
    """An output file's writeback as a writer appends to it: after each write, ``wrote()`` hands the bytes
    written since the last hand-off to the disk once there are ``WRITEBACK_BYTES`` of them."""

    def __init__(self, f, start: int = 0):
        self.f, self.done = f, start

    def wrote(self) -> None:
        end = self.f.tell()
        if end - self.done >= WRITEBACK_BYTES:
            start_writeback(self.f, self.done, end)
            self.done = end
