"""A JSON-lines file that several processes append to, rotated by size.

serve's --workers each write their own events to the SAME path, so no line may ever be split or
interleaved with another process's. Every process opens the path with O_APPEND and writes whole lines
with one ``os.write`` each time: on a local file system an O_APPEND write moves to the end and writes
as one step, so concurrent writes land one after another. Writes are kept under ``WRITE_CHUNK`` bytes
by splitting a batch at line boundaries (a single longer line is still one write).

Rotation by size takes an exclusive ``flock`` on ``path + ".lock"`` and re-checks: the process that
gets the lock first renames path.(n-1) -> path.n ... path -> path.1 (the oldest falls off after
``backups``); the others find that the path is no longer their file and reopen. A process notices
another's rotation before each batch by comparing its descriptor's inode with the path's; lines it
wrote in between went to the renamed file, whole. Make one FileSink per process (after the fork).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator

from serve.payload_log.queue import SinkWriteError

__all__ = ["WRITE_CHUNK", "FileSink"]

MiB = 1024 * 1024
# Lines are grouped into writes up to this size: few system calls per batch, and small enough that a
# write is never split by the kernel on the file systems we run on (pipes guarantee only PIPE_BUF).
WRITE_CHUNK = 64 * 1024


class FileSink:
    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 100 * MiB, backups: int = 5) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be at least 1 and backups at least 0")
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()  # write_batch vs close: close must not free a descriptor in use
        self._closed = False
        # Opened now, so that a path that cannot be written fails at start-up, not at the first event.
        self._lock_fd = os.open(self.path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._fd = -1
        self._inode = (0, 0)
        self._open()

    def write_batch(self, lines: list[bytes]) -> None:
        with self._lock:
            if self._closed:
                raise OSError(f"{self.path}: the payload log file is closed")
            try:
                if self._replaced():
                    self._open()
                left = len(lines)
                for chunk, count in _chunks(lines, WRITE_CHUNK):
                    try:
                        _write_all(self._fd, chunk)
                    except OSError as exc:  # the disk is full, say: the earlier chunks are written
                        raise SinkWriteError(f"{self.path}: {exc.strerror or exc}", failed=left) from exc
                    left -= count
                if os.fstat(self._fd).st_size >= self.max_bytes:
                    self._rotate()
            finally:
                if self._closed:  # close() ran meanwhile and left the descriptors to us
                    self._release()

    def close(self) -> None:
        self._closed = True
        # Never wait for a write in progress (close may run while the queue's thread is stuck in one):
        # that write releases the descriptors itself when it sees _closed.
        if self._lock.acquire(blocking=False):
            try:
                self._release()
            finally:
                self._lock.release()

    # ---------------------------------------------------------------- internals

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        st = os.fstat(fd)
        self._inode = (st.st_dev, st.st_ino)

    def _replaced(self) -> bool:
        """True when the path is no longer the file we hold: another process rotated it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._inode

    def _rotate(self) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            # Re-check under the lock: another process may have rotated while we waited for it.
            if not self._replaced() and os.stat(self.path).st_size >= self.max_bytes:
                if self.backups == 0:
                    os.unlink(self.path)
                else:
                    for n in range(self.backups - 1, 0, -1):
                        older = f"{self.path}.{n}"
                        if os.path.exists(older):
                            os.replace(older, f"{self.path}.{n + 1}")
                    os.replace(self.path, f"{self.path}.1")
            self._open()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _release(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._lock_fd = -1


def _chunks(lines: list[bytes], limit: int) -> Iterator[tuple[bytes, int]]:
    """Consecutive lines joined into chunks of at most ``limit`` bytes (a longer line goes alone), with
    the number of lines in each."""
    start, size = 0, 0
    for i, line in enumerate(lines):
        if size and size + len(line) > limit:
            yield b"".join(lines[start:i]), i - start
            start, size = i, 0
        size += len(line)
    if size:
        yield b"".join(lines[start:]), len(lines) - start


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    # A regular file takes a whole write unless the disk is full or a signal interrupts it; finishing
    # the rest is the best left to do (the line may then be split by another process's write).
    view = memoryview(data)
    while written < len(data):
        written += os.write(fd, view[written:])
