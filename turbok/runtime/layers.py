"""Unpacking one image layer into its own directory, in overlayfs' format, treating it as hostile.

``unpack(stream, dest)`` reads an uncompressed layer tar (``tarfile``'s stream
reader parses the format) and writes it under ``dest`` so that the layers of an
image stacked as overlayfs ``lowerdir``s are the image's root filesystem (what
containerd's overlay snapshotter does):

- whiteouts: ``.wh.NAME`` becomes a 0/0 character device ``NAME`` (overlayfs'
  whiteout), ``.wh..wh..opq`` the xattr ``trusted.overlay.opaque=y`` on its
  directory (an opaque directory hides everything below it); a directory
  replacing a whiteout in the same layer is made opaque;
- nothing is ever written outside ``dest``: every path is opened one component
  at a time from ``dest`` with ``O_NOFOLLOW`` (``openat``), so a symlink, even
  one the same layer planted, is never followed; ``..`` anywhere refuses the
  layer (``UnsafeLayer``), a leading ``/`` is dropped (as Docker does), a path
  through a symlink or a file refuses the layer, a hard link must name an
  entry of the same layer; symlink targets are stored as they are (absolute
  ones too: only the sandbox resolves them, inside its root);
- device nodes are not created (counted in ``LayerStats.skipped``); FIFOs are;
- owners, modes (setuid/setgid included: they matter inside the sandbox; on
  the host the store is a 0700 tree mounted ``nosuid,nodev``), modification
  times and the xattrs ``user.*`` and ``security.capability`` are kept; any
  other xattr (``trusted.*`` could forge overlayfs metadata) is dropped.

``read_in_root(root, path)`` reads a file of an unpacked root filesystem the
way the sandbox would see it (symlinks resolved inside ``root``, never on the
host: ``openat2(RESOLVE_IN_ROOT)``), for ``/etc/passwd`` lookups.
Needs root (owners, whiteout devices, ``trusted.*``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from turbok.runtime.errors import UnsafeLayer

__all__ = ["OPAQUE_XATTR", "LayerStats", "read_in_root", "unpack"]

OPAQUE_XATTR = "trusted.overlay.opaque"
_WH = ".wh."
_OPQ = ".wh..wh..opq"
_KEEP_XATTRS = ("user.", "security.capability")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_FD_CACHE = 64


@dataclass
class LayerStats:
    entries: int = 0
    bytes: int = 0
    whiteouts: int = 0
    opaque: int = 0
    #: entries not created (device nodes), one line each
    skipped: list[str] = field(default_factory=list)


def _parts(name: str, what: str) -> tuple[str, ...]:
    if "\x00" in name:
        raise UnsafeLayer(f"layer entry {name!r} has a NUL byte", reference=what)
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeLayer(f"layer entry {name!r} climbs out of the layer ('..')", reference=what)
    return parts


class _Tree:
    """``dest`` opened once; directories reached by ``openat`` with ``O_NOFOLLOW``, a few kept open."""

    def __init__(self, dest: Path, what: str) -> None:
        self.what = what
        self.root = os.open(dest, _DIR_FLAGS)
        self._fds: dict[tuple[str, ...], int] = {(): self.root}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _drop_below(self, parts: tuple[str, ...]) -> None:
        for key in [k for k in self._fds if k[: len(parts)] == parts and k]:
            os.close(self._fds.pop(key))

    def dir(self, parts: tuple[str, ...], *, create: bool = True) -> int:
        """The fd of directory ``parts`` (made 0755 when missing); ``UnsafeLayer`` through a non-directory."""
        fd = self._fds.get(parts)
        if fd is not None:
            return fd
        parent = self.dir(parts[:-1], create=create)
        name = parts[-1]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except (NotADirectoryError, OSError) as e:
            if isinstance(e, OSError) and e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if _is_whiteout(st):  # a whiteout replaced by a directory: the directory hides what was below
                os.unlink(name, dir_fd=parent)
                os.mkdir(name, 0o755, dir_fd=parent)
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            else:
                kind = "symlink" if stat.S_ISLNK(st.st_mode) else "non-directory"
                raise UnsafeLayer(f"layer entry under {'/'.join(parts)!r} goes through a {kind}: refused",
                                  reference=self.what) from None
        self._fds[parts] = fd
        return fd

    def trim(self) -> None:
        """Close the oldest half of the open directories (between entries: no fd in use is closed)."""
        if len(self._fds) > _FD_CACHE:
            for key in list(self._fds)[1: _FD_CACHE // 2]:
                os.close(self._fds.pop(key))

    def clear(self, parent: int, parts: tuple[str, ...], *, keep_dir: bool) -> tuple[bool, bool]:
        """Make room for a new entry: ``(a directory stays there, a whiteout was there)``."""
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False, False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True, False
            self._drop_below(parts)
            _rmtree(parent, name)
            return False, False
        os.unlink(name, dir_fd=parent)
        return False, _is_whiteout(st)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _rmtree(parent: int, name: str) -> None:
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                _rmtree(fd, entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def _xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    out = []
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr."):]
            if name.startswith(_KEEP_XATTRS):
                out.append((name, value.encode("utf-8", "surrogateescape")))
    return out


def _umask() -> int:
    """The process' umask, read without changing it (``os.umask`` would race other threads)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o777  # unknown: always fchmod


def _meta(fd: int, member: tarfile.TarInfo, *, chown: bool, created_mode: int | None = None) -> None:
    """Owner, mode, xattrs and mtime of ``member`` on ``fd``; ``created_mode``: the mode it was created with
    (its fchmod is skipped when nothing changed it)."""
    owned = chown and bool(member.uid or member.gid)
    if owned:
        os.fchown(fd, member.uid, member.gid)
    mode = member.mode & 0o7777
    if owned or created_mode != mode:
        os.fchmod(fd, mode)  # after fchown, which clears setuid/setgid
    for name, value in _xattrs(member):
        with contextlib.suppress(OSError):  # a filesystem without user xattrs: the file is still right
            os.setxattr(fd, name, value)
    mtime = int(member.mtime * 1e9)
    os.utime(fd, ns=(mtime, mtime))


def unpack(stream: BinaryIO, dest: Path, *, what: str = "layer",
           on_bytes: Callable[[int], None] | None = None) -> LayerStats:
    """Unpack the tar read from ``stream`` into the empty directory ``dest`` (see the module docstring).

    ``what`` names the layer in errors; ``on_bytes`` is told the size of each file written."""
    stats = LayerStats()
    chown = os.geteuid() == 0
    umask = _umask()
    tree = _Tree(dest, what)
    dir_times: list[tuple[tuple[str, ...], int]] = []
    try:
        os.fchmod(tree.root, 0o755)  # the image's "/" unless the layer says otherwise
        with tarfile.open(fileobj=stream, mode="r|", errorlevel=1) as tar:
            for member in tar:
                stats.entries += 1
                tree.trim()
                parts = _parts(member.name, what)
                if not parts:
                    if member.isdir():
                        _meta(tree.root, member, chown=chown)
                        dir_times.append(((), int(member.mtime * 1e9)))
                    continue
                base = parts[-1]
                if any(p.startswith(_WH + _WH) for p in parts[:-1]):
                    continue  # under aufs' own metadata directories (.wh..wh.plnk...): not image content
                if base.startswith(_WH):
                    parent = tree.dir(parts[:-1])
                    if base == _OPQ:
                        os.setxattr(parent, OPAQUE_XATTR, b"y")
                        stats.opaque += 1
                    elif not base.startswith(_WH + _WH):  # .wh..wh.* other than the opaque marker: aufs metadata
                        hidden = base[len(_WH):]
                        _parts(hidden, what)
                        try:
                            os.stat(hidden, dir_fd=parent, follow_symlinks=False)
                        except FileNotFoundError:
                            os.mknod(hidden, 0o600 | stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
                            stats.whiteouts += 1
                    continue
                parent = tree.dir(parts[:-1])
                if member.isdir():
                    stays, was_whiteout = tree.clear(parent, parts, keep_dir=True)
                    if not stays:
                        os.mkdir(base, 0o700, dir_fd=parent)
                    fd = tree.dir(parts)
                    if was_whiteout:
                        os.setxattr(fd, OPAQUE_XATTR, b"y")
                    _meta(fd, member, chown=chown)
                    dir_times.append((parts, int(member.mtime * 1e9)))
                    continue
                tree.clear(parent, parts, keep_dir=False)
                if member.isreg():
                    # created with its mode where the umask leaves it whole (one fchmod less per file); the
                    # file is in a 0700 tree meanwhile, and a failed unpack is removed whole
                    mode = member.mode & 0o7777
                    whole = mode & (umask | 0o6000) == 0  # setuid/setgid: set after the data is written
                    fd = os.open(base, _FILE_FLAGS, mode if whole else 0o600, dir_fd=parent)
                    try:
                        if member.size:
                            src = tar.extractfile(member)
                            if src is not None:
                                while chunk := src.read(_CHUNK):
                                    view = memoryview(chunk)
                                    while view:
                                        view = view[os.write(fd, view):]
                        _meta(fd, member, chown=chown, created_mode=mode if whole else None)
                    finally:
                        os.close(fd)
                    stats.bytes += member.size
                    if on_bytes is not None:
                        on_bytes(member.size)
                elif member.issym():
                    os.symlink(member.linkname, base, dir_fd=parent)
                    if chown:
                        os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
                    mtime = int(member.mtime * 1e9)
                    os.utime(base, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)
                elif member.islnk():
                    target = _parts(member.linkname, what)
                    if not target:
                        raise UnsafeLayer(f"hard link {member.name!r} to the layer's root: refused", reference=what)
                    try:
                        tparent = tree.dir(target[:-1], create=False)
                        tst = os.stat(target[-1], dir_fd=tparent, follow_symlinks=False)
                    except FileNotFoundError:
                        raise UnsafeLayer(f"hard link {member.name!r} names {member.linkname!r}, which is not in "
                                          "this layer: refused", reference=what) from None
                    if stat.S_ISDIR(tst.st_mode):
                        raise UnsafeLayer(f"hard link {member.name!r} to a directory: refused", reference=what)
                    os.link(target[-1], base, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
                elif member.isfifo():
                    os.mkfifo(base, member.mode & 0o777, dir_fd=parent)
                    if chown:
                        os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
                elif member.ischr() or member.isblk():
                    kind = "character" if member.ischr() else "block"
                    stats.skipped.append(f"{'/'.join(parts)}: {kind} device {member.devmajor}:{member.devminor}")
                else:
                    stats.skipped.append(f"{'/'.join(parts)}: tar type {member.type!r}")
            while stream.read(_CHUNK):  # the end-of-archive blocks and padding: the digest covers them
                pass
        for parts, mtime in reversed(dir_times):  # last: writing into a directory moves its mtime
            try:
                fd = tree.dir(parts, create=False)
            except (FileNotFoundError, UnsafeLayer):
                continue
            os.utime(fd, ns=(mtime, mtime))
    except tarfile.TarError as e:
        raise UnsafeLayer(f"{what} is not a valid tar archive: {e}", reference=what) from None
    finally:
        tree.close()
    return stats


# --- reading a file of an unpacked root filesystem, symlinks resolved inside it --------------------

_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)


def read_in_root(root: Path, path: str, *, limit: int = 1 << 20) -> bytes | None:
    """The first ``limit`` bytes of ``path`` inside ``root`` as the sandbox sees it, or None if absent.

    Symlinks are resolved with ``root`` as ``/`` (``openat2`` ``RESOLVE_IN_ROOT``): an image's
    ``/etc/passwd -> /host/file`` reads the image's own ``/host/file``, never the host's."""
    rfd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
        fd = _libc.syscall(_SYS_OPENAT2, rfd, path.encode(), ctypes.byref(how), ctypes.sizeof(how))
        if fd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
                return None
            raise OSError(err, os.strerror(err), f"{root}{path}")
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.read(fd, limit)
        finally:
            os.close(fd)
    finally:
        os.close(rfd)
