"""The agent's HTTP/1.1 API: upstream sandboxd's REST filesystem API, the legacy runtime protocol, turbok's spawn.

Upstream sandboxd (``filesystem/v1/filesystem.yaml``, served under ``/v1``):

- ``GET /v1/files/P``: a file's bytes (``Range`` honoured) or a directory's
  listing ``{"path", "entries": [{"name", "size", "type", "modified_at", "mode"}]}``
  (symlinks described by their target when it is inside the root, left out
  otherwise); ``HEAD``: the same without a body (existence: 200 or 404);
- ``PUT /v1/files/P[?mode=0644]``: the body (raw, or the ``file`` part of a
  multipart form) written to a temporary file beside P, synced, renamed over it:
  atomic; parents made; 204. A directory there is 400;
- ``DELETE /v1/files/P[?recursive=true]``: 204; a non-empty directory without
  ``recursive`` is 409; the root itself only with ``recursive`` (its contents);
- ``GET /v1/health`` ``{"status": "ok", "uptime_seconds"}``, ``GET /v1/metadata``
  ``{"env": {...}}`` (the ``SANDBOX_*`` variables whose names do not look secret).

Errors are ``{"code": "PERMISSION_DENIED"|"NOT_FOUND"|..., "message"}``; a path
that leads outside the root is 403.

The legacy python-runtime protocol (upstream ``examples/python-runtime-sandbox``):
``GET /``, ``POST /execute`` ``{"command", "timeout_seconds"?}`` (``/bin/sh -c``
in the root; stdout and stderr capped at ``OUTPUT_LIMIT`` each: ``truncated``;
past the timeout (default 300 s) killed: exit code 124, ``timed_out``),
``POST /upload`` (multipart, the ``file`` part's filename is the path),
``GET /download/P``, ``GET /list/P``, ``GET /exists/P``; errors ``{"detail"}``
as upstream's FastAPI answers them.

``POST /turbok/v1/spawn`` ``{"argv", "env"?, "cwd"?, "stdin"?: base64}``: how
turbok's router runs a command under its own bounds. The answer (200, chunked)
is a stream of frames ``kind (1 byte) + length (4 bytes, big-endian) + data``:
``o`` stdout, ``e`` stderr, then one ``x`` with the exit code as decimal text
(128 + N for a signal N, after an ``s`` frame with N). ``"confine_cwd": true``
confines ``cwd`` to the root as the ProcessService does; else any absolute
directory of the container is taken, as ``kubectl exec`` does. A sender that stops reading holds the command on its
next write (the pipes fill); one that goes away (its connection closed or
reset) gets the command's process group killed at once.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import re
import signal
import stat
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from . import procs
from .http1 import BodyReader, HttpError, Request, Response
from .paths import Escapes, confine

__all__ = ["OUTPUT_LIMIT", "Api"]

#: Captured stdout and stderr of a legacy ``/execute``, each.
OUTPUT_LIMIT = 4 * 1024 * 1024
#: Largest JSON request body (``/execute``, ``/turbok/v1/spawn`` with base64 stdin).
MAX_JSON = 16 * 1024 * 1024
DEFAULT_TIMEOUT = 300.0
TIMEOUT_EXIT = 124
_MODE = re.compile(r"^0[0-7]{3}$")
_SECRET_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CRED", "KEY", "AUTH", "BEARER", "PRIVATE", "CERT")
_CHUNK = 256 * 1024


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Fail(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _os_fail(e: OSError, what: str) -> _Fail:
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return _Fail(404, "NOT_FOUND", f"{what}: path does not exist within the sandbox")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return _Fail(403, "PERMISSION_DENIED", f"{what}: permission denied")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return _Fail(507, "RESOURCE_EXHAUSTED", f"{what}: no space left in the sandbox")
    if e.errno == errno.ENOTEMPTY:
        return _Fail(409, "CONFLICT", "directory is not empty; pass recursive=true to remove it")
    if e.errno == errno.ELOOP:
        return _Fail(404, "NOT_FOUND", f"{what}: too many levels of symbolic links")
    return _Fail(500, "INTERNAL", f"{what}: {e.strerror}")


class Api:
    """The request handler (``__call__``) over the root directory ``root``."""

    def __init__(self, root: str, registry: procs.Registry, *, metadata_prefix: str = "SANDBOX_") -> None:
        self.root = root
        self.registry = registry
        self.started = time.monotonic()
        self.metadata = {k: v for k, v in os.environ.items()
                         if k.startswith(metadata_prefix) and not any(m in k.upper() for m in _SECRET_MARKERS)}

    # ------------------------------------------------------------------ dispatch

    def __call__(self, req: Request, resp: Response) -> None:
        path = req.raw_path
        try:
            if path.startswith("/v1/files/") or path == "/v1/files":
                self._v1_files(req, resp, urllib.parse.unquote(path[len("/v1/files/"):],
                                                                errors="surrogateescape"))
            elif path == "/v1/health":
                self._only(req, "GET", "HEAD")
                resp.json(200, {"status": "ok", "uptime_seconds": int(time.monotonic() - self.started)})
            elif path == "/v1/metadata":
                self._only(req, "GET", "HEAD")
                resp.json(200, {"env": self.metadata})
            elif path == "/turbok/v1/spawn":
                self._only(req, "POST")
                self._spawn(req, resp)
            else:
                self._legacy(req, resp, path)
        except _Fail as f:
            if path.startswith("/v1/") or path.startswith("/turbok/"):
                resp.json(f.status, {"code": f.code, "message": f.message})
            else:
                resp.json(f.status, {"detail": f.message})

    @staticmethod
    def _only(req: Request, *methods: str) -> None:
        if req.method not in methods:
            raise _Fail(405, "METHOD_NOT_ALLOWED", f"{req.method} is not allowed here (only {', '.join(methods)})")

    def _confined(self, user_path: str) -> str:
        try:
            return confine(self.root, user_path)
        except Escapes:
            raise _Fail(403, "PERMISSION_DENIED", "path traversal outside sandbox root is forbidden") from None

    # ------------------------------------------------------------------ /v1/files

    def _v1_files(self, req: Request, resp: Response, user_path: str) -> None:
        if req.method in ("GET", "HEAD"):
            target = self._confined(user_path)
            try:
                st = os.stat(target)
            except OSError as e:
                raise _os_fail(e, "stat") from None
            if stat.S_ISDIR(st.st_mode):
                shown = user_path if user_path.startswith("/") else "/" + user_path
                resp.json(200, {"path": shown, "entries": self._entries(target, user_path)})
            else:
                self._send_file(req, resp, target, st)
        elif req.method == "PUT":
            mode = 0o644
            if "mode" in req.query:
                if not _MODE.match(req.query["mode"]):
                    raise _Fail(400, "INVALID_ARGUMENT", f"mode {req.query['mode']!r} must match ^0[0-7]{{3}}$")
                mode = int(req.query["mode"], 8)
            target = self._confined(user_path)
            if os.path.isdir(target):
                raise _Fail(400, "INVALID_ARGUMENT", "target path is a directory")
            chunks = self._file_body(req)
            self._atomic_write(target, chunks, mode)
            resp.empty(204)
        elif req.method == "DELETE":
            self._delete(req, resp, user_path)
        else:
            raise _Fail(405, "METHOD_NOT_ALLOWED", f"{req.method} is not allowed on /v1/files")

    def _entries(self, target: str, user_path: str) -> list[dict[str, Any]]:
        out = []
        try:
            names = sorted(os.listdir(target))
        except OSError as e:
            raise _os_fail(e, "list") from None
        for name in names:
            full = os.path.join(target, name)
            try:
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    st = os.stat(confine(self.root, os.path.join(target, name)))
            except (OSError, Escapes):
                continue  # vanished, dangling, or leading outside: left out, as upstream
            out.append({"name": name, "size": st.st_size,
                        "type": "directory" if stat.S_ISDIR(st.st_mode) else "file",
                        "modified_at": _iso(st.st_mtime), "mode": f"{stat.S_IMODE(st.st_mode):04o}"})
        return out

    def _send_file(self, req: Request, resp: Response, target: str, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise _Fail(400, "INVALID_ARGUMENT", "not a regular file")
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            raise _os_fail(e, "open") from None
        try:
            size = os.fstat(fd).st_size
            start, end = 0, size
            status = 200
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                       "Last-Modified": _iso(st.st_mtime)}
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", req.headers.get("range", ""))
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(size, int(m.group(2)) + 1) if m.group(2) else size
                else:
                    start = max(0, size - int(m.group(2)))
                if start >= size or start >= end:
                    resp.start(416, {"Content-Range": f"bytes */{size}"}, length=0)
                    return
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            resp.start(status, headers, length=end - start)
            if resp.head_only:
                return
            pos = start
            while pos < end:
                data = os.pread(fd, min(_CHUNK, end - pos), pos)
                if not data:
                    break
                resp.write(data)
                pos += len(data)
            if pos < end:
                raise HttpError("the file shrank while it was sent")
        finally:
            os.close(fd)

    def _file_body(self, req: Request) -> Iterator[bytes]:
        ctype = req.headers.get("content-type", "")
        if ctype.lower().startswith("multipart/form-data"):
            name, chunks = multipart_file(req.body, ctype)
            return chunks
        return iter(req.body)

    @staticmethod
    def _atomic_write(target: str, chunks: Iterator[bytes], mode: int) -> int:
        parent = os.path.dirname(target)
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise _Fail(409, "CONFLICT", "a part of the path is a file, not a directory") from None
        except OSError as e:
            raise _os_fail(e, "mkdir") from None
        temp = os.path.join(parent, f".sandboxd-tmp-{os.urandom(6).hex()}")
        written = 0
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, mode)
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                    written += len(chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, target)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            if e.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise _Fail(400, "INVALID_ARGUMENT", "target path is a directory") from None
            raise _os_fail(e, "write") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return written

    def _delete(self, req: Request, resp: Response, user_path: str) -> None:
        target = self._confined(user_path)
        recursive = False
        if "recursive" in req.query:
            value = req.query["recursive"].lower()
            if value not in ("1", "t", "true", "0", "f", "false"):
                raise _Fail(400, "INVALID_ARGUMENT", f"recursive {req.query['recursive']!r} must be a boolean")
            recursive = value in ("1", "t", "true")
        try:
            os.lstat(target)
        except OSError as e:
            raise _os_fail(e, "delete") from None
        if target == os.path.realpath(self.root):
            if not recursive:
                raise _Fail(409, "CONFLICT", "cannot delete the sandbox root; pass recursive=true to clear its contents")
            for name in os.listdir(target):
                self._remove(os.path.join(target, name), recursive=True)
        else:
            self._remove(target, recursive=recursive)
        resp.empty(204)

    @staticmethod
    def _remove(path: str, *, recursive: bool) -> None:
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                if recursive:
                    import shutil  # only here: a start costs less without it

                    shutil.rmtree(path)
                else:
                    os.rmdir(path)
            else:
                os.unlink(path)
        except OSError as e:
            if e.errno == errno.EEXIST:
                e.errno = errno.ENOTEMPTY
            raise _os_fail(e, "delete") from None

    # ------------------------------------------------------------------ legacy protocol

    def _legacy(self, req: Request, resp: Response, path: str) -> None:
        endpoint, _, rest = path.lstrip("/").partition("/")
        arg = urllib.parse.unquote(rest, errors="surrogateescape")
        if endpoint == "" and not rest:
            self._only(req, "GET", "HEAD")
            resp.json(200, {"status": "ok", "message": "Sandbox Runtime is active."})
        elif endpoint == "execute":
            self._only(req, "POST")
            self._execute(req, resp)
        elif endpoint == "upload":
            self._only(req, "POST")
            name, chunks = multipart_file(req.body, req.headers.get("content-type", ""))
            if not name:
                raise _Fail(400, "INVALID_ARGUMENT", "the 'file' part needs a filename")
            target = self._legacy_path(name)
            written = self._atomic_write(target, chunks, 0o644)
            resp.json(200, {"message": f"File '{name}' uploaded successfully.", "size": written})
        elif endpoint == "download":
            self._only(req, "GET", "HEAD")
            target = self._legacy_path(arg)
            try:
                st = os.stat(target)
            except OSError as e:
                raise _Fail(404, "NOT_FOUND", "File not found") if e.errno == errno.ENOENT else _os_fail(e, "open") \
                    from None
            if not stat.S_ISREG(st.st_mode):
                raise _Fail(404, "NOT_FOUND", "File not found")
            self._send_file(req, resp, target, st)
        elif endpoint == "list":
            self._only(req, "GET")
            target = self._legacy_path(arg)
            if not os.path.isdir(target):
                raise _Fail(404, "NOT_FOUND", "Path is not a directory")
            resp.json(200, [{"name": e["name"], "size": e["size"], "type": e["type"],
                             "mod_time": datetime.fromisoformat(e["modified_at"].replace("Z", "+00:00")).timestamp()}
                            for e in self._entries(target, arg)])
        elif endpoint == "exists":
            self._only(req, "GET")
            try:
                found = os.path.lexists(self._legacy_path(arg))
            except _Fail:
                found = False
            resp.json(200, {"path": arg, "exists": found})
        else:
            raise _Fail(404, "NOT_FOUND", "Not Found")

    def _legacy_path(self, user_path: str) -> str:
        try:
            return confine(self.root, user_path)
        except Escapes:
            raise _Fail(403, "PERMISSION_DENIED", f"Access denied: {user_path} is outside the work directory") from None

    def _json_body(self, req: Request) -> Any:
        try:
            return json.loads(req.body.read_all(MAX_JSON))
        except HttpError as e:
            raise _Fail(413, "INVALID_ARGUMENT", str(e)) from None
        except ValueError as e:
            raise _Fail(400, "INVALID_ARGUMENT", f"request body is not valid JSON: {e}") from None

    def _execute(self, req: Request, resp: Response) -> None:
        body = self._json_body(req)
        if not isinstance(body, dict) or not isinstance(body.get("command"), str):
            raise _Fail(400, "INVALID_ARGUMENT", 'body must be a JSON object with a string "command"')
        timeout = body.get("timeout_seconds")
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 86400:
            raise _Fail(400, "INVALID_ARGUMENT", "timeout_seconds must be a positive number of seconds")
        result = run_captured(self.root, ["/bin/sh", "-c", body["command"]], timeout=float(timeout),
                              limit=OUTPUT_LIMIT)
        resp.json(200, result)

    # ------------------------------------------------------------------ turbok's spawn

    def _spawn(self, req: Request, resp: Response) -> None:
        body = self._json_body(req)
        if not isinstance(body, dict) or not isinstance(body.get("argv"), list) or not all(
                isinstance(a, str) for a in body["argv"]):
            raise _Fail(400, "INVALID_ARGUMENT", 'body must be a JSON object with "argv": [str]')
        env = body.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise _Fail(400, "INVALID_ARGUMENT", '"env" must map names to strings')
        stdin = base64.b64decode(body["stdin"]) if body.get("stdin") is not None else None
        try:
            proc = procs.start(self.root, body["argv"], env=env, cwd=body.get("cwd") or None,
                               stdin=stdin is not None, confine_cwd=bool(body.get("confine_cwd")))
        except procs.CommandError as e:
            status = {"NOT_FOUND": 404, "PERMISSION_DENIED": 403, "INVALID_ARGUMENT": 400,
                      "RESOURCE_EXHAUSTED": 503}.get(e.code, 500)
            raise _Fail(status, e.code, e.message) from None
        self.registry.add(proc)
        try:
            relay(proc, resp, stdin)
        finally:
            self.registry.remove(proc.id)
            proc.close()


def relay(proc: procs.Managed, resp: Response, stdin: bytes | None) -> None:
    """Stream ``proc``'s output as spawn frames; kill it if the client goes away."""
    resp.start(200, {"Content-Type": "application/x-turbok-frames", "X-Process-Id": str(proc.id)})

    def send(stream: str, data: bytes) -> bool:
        try:
            resp.write((b"o" if stream == "stdout" else b"e") + len(data).to_bytes(4, "big") + data)
        except OSError:
            proc.kill()
            raise procs.Gone from None
        return True

    try:
        code = procs.drive(proc, send, watch=resp.sock, stdin=stdin)
    except procs.Gone:
        proc.popen.wait()
        raise HttpError("the client went away") from None
    assert code is not None
    status = str(procs.shell_status(code)).encode()
    if code < 0:  # a signal ended it: its number first (upstream's ProcessService reports -1 for that)
        resp.write(b"s" + len(str(-code)).to_bytes(4, "big") + str(-code).encode())
    resp.write(b"x" + len(status).to_bytes(4, "big") + status)
    resp.end()


def run_captured(root: str, argv: list[str], *, timeout: float, limit: int,
                 env: dict[str, str] | None = None, cwd: str | None = None) -> dict[str, Any]:
    """Run ``argv`` to its end or ``timeout``; output capped at ``limit`` bytes each (the rest is read and
    dropped). The legacy ``/execute`` answer."""
    try:
        proc = procs.start(root, argv, env=env, cwd=cwd, stdin=False)
    except procs.CommandError as e:
        return {"stdout": "", "stderr": e.message + "\n", "exit_code": 127, "timed_out": False, "truncated": False}
    out = {"stdout": bytearray(), "stderr": bytearray()}
    cut = {"stdout": False, "stderr": False}

    def keep(stream: str, data: bytes) -> bool:
        room = limit - len(out[stream])
        if room > 0:
            out[stream] += data[:room]
        if len(data) > room:
            cut[stream] = True
        return True

    try:
        code = procs.drive(proc, keep, deadline=time.monotonic() + timeout)
    finally:
        proc.signal(signal.SIGKILL)  # what it left behind in its group
        proc.close()
    timed_out = code is None
    stderr = out["stderr"].decode("utf-8", "replace")
    if timed_out:
        sep = "" if not stderr or stderr.endswith("\n") else "\n"
        stderr += f"{sep}Command timed out after {timeout:g} seconds\n"
    return {"stdout": out["stdout"].decode("utf-8", "replace"), "stderr": stderr,
            "exit_code": TIMEOUT_EXIT if code is None else procs.shell_status(code), "timed_out": timed_out,
            "truncated": cut["stdout"] or cut["stderr"]}


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)
_FILENAME = re.compile(r'filename\*?=(?:"((?:[^"\\]|\\.)*)"|([^;]*))', re.I)
_NAME = re.compile(r'[; ]name="?([^";]*)"?', re.I)


def multipart_file(body: BodyReader, content_type: str) -> tuple[str, Iterator[bytes]]:
    """The ``file`` part of a multipart form: (its filename, its bytes as they arrive)."""
    m = _BOUNDARY.search(content_type)
    if not m:
        raise _Fail(400, "INVALID_ARGUMENT", "multipart body without a boundary")
    delim = b"\r\n--" + m.group(1).encode("latin-1")
    buf = bytearray(b"\r\n")
    chunks = iter(body)

    def more() -> bool:
        try:
            buf.extend(next(chunks))
            return True
        except StopIteration:
            return False

    while True:  # find each part's head; skip parts that are not "file"
        at = buf.find(delim)
        while at < 0:
            if not more():
                raise _Fail(400, "INVALID_ARGUMENT", "multipart body is missing the required 'file' part")
            at = buf.find(delim)
        del buf[:at + len(delim)]
        while b"\r\n\r\n" not in buf:
            if len(buf) > 64 * 1024 or not more():
                raise _Fail(400, "INVALID_ARGUMENT", "malformed multipart body")
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        buf[:] = rest
        if head.startswith(b"--"):
            raise _Fail(400, "INVALID_ARGUMENT", "multipart body is missing the required 'file' part")
        disposition = next((line for line in head.decode("utf-8", "surrogateescape").split("\r\n")
                            if line.lower().startswith("content-disposition")), "")
        name = _NAME.search(disposition)
        if name and name.group(1) == "file":
            break
    fn = _FILENAME.search(disposition)
    filename = ""
    if fn:
        raw = fn.group(1) if fn.group(1) is not None else fn.group(2).strip()
        if "filename*=" in disposition.lower() and "''" in raw:
            raw = urllib.parse.unquote(raw.split("''", 1)[1], errors="surrogateescape")
        filename = re.sub(r'\\([\\"])', r"\1", raw)

    def data() -> Iterator[bytes]:
        while True:
            at = buf.find(delim)
            if at >= 0:
                if at:
                    yield bytes(buf[:at])
                return
            keep = len(delim)
            if len(buf) > keep:
                out = bytes(buf[:-keep])
                del buf[:-keep]
                yield out
            if not more():
                raise _Fail(400, "INVALID_ARGUMENT", "the multipart body ended inside the file")

    return filename, data()
