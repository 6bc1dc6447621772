"""Confinement of file paths to a sandbox's work directory, against hostile symlinks.

The work directory is written by sandboxed code, so anything in it may be a
trap: a symlink to ``/etc``, to ``/root/.ssh/id_rsa``, a link loop, a FIFO that
blocks whoever opens it. The router reads and writes it from the host, so every
path goes through two checks:

1. ``split_path``, lexically: no NUL, no ``..`` component, absolute paths only
   under ``/app`` (the work directory as the sandbox sees it).
2. ``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`` from a
   descriptor of the work directory, so the kernel refuses any resolution that
   leaves it (absolute symlinks, ``..`` in a link target, ``/proc`` magic
   links), atomically, with no window between check and use.

Relative symlinks that stay inside the work directory work; absolute ones are
refused (an in-sandbox ``/app/x`` target is not a host path). Everything else
is done through descriptors (``*at`` calls), never through host path strings.

Only blocking system calls here; ``turbok.sandboxd.files`` calls them (from a
worker thread where they may take long) and turns the errors into answers.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

from turbok.runtime.cri import WORKDIR_MOUNT
from turbok.sandboxd.errors import (
    AccessDenied,
    BadRequest,
    Conflict,
    NotFound,
    SandboxdError,
    SandboxNotReady,
)
from turbok.sdk.wire import FileInfo

__all__ = ["SANDBOX_WORKDIR", "WorkDir", "display", "split_path"]

#: Where the work directory is mounted inside every sandbox.
SANDBOX_WORKDIR = WORKDIR_MOUNT

_SYS_OPENAT2 = 437  # the same number on every architecture (added in Linux 5.6)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS
_PATH_MAX = 4096  # Linux's; longer paths cannot resolve anyway


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, _RESOLVE)
    raw = os.fsencode(path)
    for _ in range(16):
        fd = _syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(raw),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        # EAGAIN: a concurrent rename raced the ".." check; the kernel asks us to retry.
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def split_path(path: str) -> tuple[str, ...]:
    """The components of a sandbox path, relative to the work directory.

    ``""``, ``"."`` and ``"/app"`` name the work directory itself (``()``).
    Raises ``BadRequest`` (NUL) or ``AccessDenied`` (``..``, absolute outside /app).
    """
    if "\0" in path:
        raise BadRequest(f"path {path!r} contains a NUL byte")
    if len(path) > _PATH_MAX:
        raise BadRequest(f"path is longer than {_PATH_MAX} characters")
    if path.startswith("/"):
        stripped = path.lstrip("/")
        head, _, rest = stripped.partition("/")
        if head != SANDBOX_WORKDIR.strip("/"):
            raise AccessDenied(f"{path} is outside the work directory {SANDBOX_WORKDIR}")
        path = rest
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    if ".." in parts:
        raise AccessDenied(f"'..' is not allowed in paths ({path!r})")
    return parts


def display(parts: tuple[str, ...]) -> str:
    """How a path is named in messages: as the sandbox sees it."""
    return "/".join((SANDBOX_WORKDIR, *parts))


def _mapped(err: OSError, parts: tuple[str, ...]) -> SandboxdError:
    """A resolution error as the answer it deserves."""
    where = display(parts)
    if err.errno == errno.EXDEV:
        return AccessDenied(f"{where} leads outside the work directory through a symbolic link")
    if err.errno == errno.ENOENT:
        return NotFound(f"{where}: no such file or directory")
    if err.errno == errno.ENOTDIR:
        return NotFound(f"{where}: not a directory")
    if err.errno == errno.ELOOP:
        return NotFound(f"{where}: too many levels of symbolic links")
    if err.errno == errno.ENAMETOOLONG:
        return BadRequest(f"{where}: name too long")
    if err.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(f"{where}: permission denied")
    if err.errno == errno.EISDIR:
        return Conflict(f"{where} is a directory")
    if err.errno == errno.ENOSYS:
        return SandboxdError("this kernel has no openat2(2) (Linux >= 5.6 is needed for file access)")
    return SandboxdError(f"{where}: {err.strerror}")


class WorkDir:
    """One sandbox's work directory, held open by a descriptor for one request.

    Use as a context manager; every method resolves its path beneath the held
    descriptor, so even a work directory renamed meanwhile stays the one opened.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._fd = -1
        self._owner: tuple[int, int] | None = None

    def __enter__(self) -> WorkDir:
        try:
            self._fd = os.open(self._root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise SandboxNotReady(
                "the sandbox's work directory does not exist (yet); retry once it runs"
            ) from e
        except OSError as e:  # not a plain directory: never made by the runtime, so refuse
            raise SandboxdError(f"cannot open the sandbox's work directory: {e.strerror}") from e
        st = os.fstat(self._fd)
        # Files the router creates belong to whoever owns the work directory, so
        # an unprivileged process in the sandbox can change them.
        if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
            self._owner = (st.st_uid, st.st_gid)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)
        self._fd = -1

    @contextmanager
    def _open(self, parts: tuple[str, ...], flags: int, mode: int = 0) -> Iterator[int]:
        try:
            fd = _openat2(self._fd, "/".join(parts) or ".", flags, mode)
        except OSError as e:
            raise _mapped(e, parts) from e
        try:
            yield fd
        finally:
            os.close(fd)

    def exists(self, parts: tuple[str, ...]) -> bool:
        try:
            with self._open(parts, os.O_PATH):
                return True
        except NotFound:
            return False

    def open_file(self, parts: tuple[str, ...]) -> tuple[int, int]:
        """A descriptor of a regular file for reading, and its size; the caller closes it."""
        try:
            # O_NONBLOCK: opening a FIFO planted by the sandbox must not hang the router.
            fd = _openat2(self._fd, "/".join(parts) or ".", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as e:
            raise _mapped(e, parts) from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise NotFound(f"{display(parts)} is {what}")
        return fd, st.st_size

    def regular_size(self, parts: tuple[str, ...]) -> int | None:
        """Size of the regular file at ``parts`` (a final symlink not followed), or None if there is none."""
        try:
            with self._open(parts, os.O_PATH | os.O_NOFOLLOW) as fd:
                st = os.fstat(fd)
        except SandboxdError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def list(self, parts: tuple[str, ...]) -> list[FileInfo]:
        """The entries of a directory. Symlinks report their target if it is inside, else themselves."""
        entries: list[FileInfo] = []
        with self._open(parts, os.O_RDONLY | os.O_DIRECTORY) as fd, os.scandir(fd) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)  # an lstat relative to fd: never follows
                if stat.S_ISLNK(st.st_mode):
                    try:
                        with self._open((*parts, entry.name), os.O_PATH) as target:
                            st = os.fstat(target)
                    except SandboxdError:
                        # Dangling, looping or escaping: say nothing about where it points.
                        entries.append(FileInfo(name=entry.name, size=0, type="file", mod_time=st.st_mtime))
                        continue
                kind: Literal["file", "directory"] = "directory" if stat.S_ISDIR(st.st_mode) else "file"
                entries.append(FileInfo(name=entry.name, size=st.st_size, type=kind, mod_time=st.st_mtime))
        return entries

    def ensure_parent(self, parts: tuple[str, ...]) -> int:
        """Create the directories above ``parts`` as needed; a descriptor of the parent."""
        for depth in range(1, len(parts)):
            with self._open(parts[: depth - 1], os.O_PATH | os.O_DIRECTORY) as parent:
                try:
                    os.mkdir(parts[depth - 1], 0o755, dir_fd=parent)
                except FileExistsError:
                    continue
                except OSError as e:
                    raise _mapped(e, parts[:depth]) from e
                if self._owner:
                    os.chown(parts[depth - 1], *self._owner, dir_fd=parent, follow_symlinks=False)
        try:
            return _openat2(self._fd, "/".join(parts[:-1]) or ".", os.O_PATH | os.O_DIRECTORY)
        except OSError as e:
            if e.errno == errno.ENOTDIR:
                raise Conflict(f"{display(parts[:-1])}: a part of it is a file, not a directory") from e
            raise _mapped(e, parts[:-1]) from e

    def create_temp(self, parent: int) -> tuple[int, str]:
        """A new, empty file in ``parent`` for an atomic write: (descriptor, name)."""
        name = f".tk-upload-{secrets.token_hex(8)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o644, dir_fd=parent)
        if self._owner:
            os.fchown(fd, *self._owner)
        return fd, name

    @staticmethod
    def commit(parent: int, temp: str, parts: tuple[str, ...]) -> None:
        """Rename the finished temp file over the destination (replacing a symlink, never following it)."""
        try:
            os.rename(temp, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
        except OSError as e:
            WorkDir.discard(parent, temp)
            if e.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise Conflict(f"{display(parts)} is a directory") from e
            raise _mapped(e, parts) from e

    @staticmethod
    def discard(parent: int, temp: str) -> None:
        """Remove an unfinished temp file (best effort)."""
        with suppress(OSError):
            os.unlink(temp, dir_fd=parent)
