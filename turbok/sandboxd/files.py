"""The files API of the legacy protocol: upload, download, list, exists.

Two ways to a sandbox's files, by its ``Backend``: through its sandboxd agent
(``AgentBackend``: the agent's ``/v1/files`` API inside the sandbox, where a
symlink can only lead to the sandbox's own files), or, for a Pod without an
address, on the container's host-served work directory, where every path is
confined by ``turbok.sandboxd.confine`` (403 outside the work directory, 404
missing). Either way the router first checks paths lexically
(``confine.split_path``: no ``..``, absolute only under ``/app``) and applies its
bounds (upload size and per-sandbox total). Bodies stream both ways: an upload goes to a temp file
next to its destination in chunks and is renamed into place when complete (no
reader ever sees half a file; nothing changes if it fails, is over
``RouterConfig.upload_limit``, or would take the sandbox's uploaded files past
``upload_total_limit`` (``Call.uploads``), each answered 413, or runs out of
disk, 507); a download is read in chunks as the client takes them. Disk I/O
runs in worker threads, never on the event loop.

Shapes follow the upstream python runtime that the official client speaks:
``{"message": ...}`` on upload, ``[{"name", "size", "type", "mod_time"}]`` from
list, ``{"path", "exists"}`` from exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import urllib.parse
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from turbok.sandboxd.agentclient import AgentBackend, AgentError, AgentResponse
from turbok.sandboxd.confine import WorkDir, display, split_path
from turbok.sandboxd.context import Call
from turbok.sandboxd.errors import (
    AccessDenied,
    BadRequest,
    Conflict,
    ExecFailed,
    InsufficientStorage,
    NotFound,
    PayloadTooLarge,
    SandboxdError,
)
from turbok.sdk.wire import FileInfo

__all__ = ["disposition_params", "download", "exists", "list_dir", "upload"]

_CHUNK = 256 * 1024


_PARAM = re.compile(r';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_HTML5_ESCAPE = re.compile(r"%(22|[01][0-9A-Fa-f])")


def disposition_params(header: str) -> dict[str, str]:
    """The parameters of a Content-Disposition header, decoded.

    Parsed here rather than by aiohttp, which strips leading slashes from
    filenames (turning ``/etc/passwd`` into a harmless-looking relative path
    instead of the refusal it deserves). Quoted values lose the escapes
    clients apply: ``\\"`` and ``\\\\`` (httpx; other backslashes stay, as
    urllib3 and browsers send them unescaped) and the HTML5 form escapes
    (``%22`` for a quote, ``%XX`` for control characters, which the path check
    then refuses); ``filename*`` (RFC 5987) is percent-decoded.
    """
    params: dict[str, str] = {}
    for m in _PARAM.finditer(header):
        key, value = m.group(1).lower(), m.group(2).strip()
        if key.endswith("*"):
            _, _, encoded = value.partition("''")
            value = urllib.parse.unquote(encoded or value, errors="surrogateescape")
        elif value.startswith('"'):
            value = re.sub(r'\\([\\"])', r"\1", value[1:-1])
            value = _HTML5_ESCAPE.sub(lambda e: chr(int(e.group(1), 16)), value)
        params.setdefault(key, value)
    return params


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def upload(call: Call) -> web.Response:
    if not call.request.content_type.startswith("multipart/"):
        raise BadRequest(
            "upload takes a multipart/form-data body with one field 'file' (its filename is the path)"
        )
    reader = await call.request.multipart()
    while True:
        part = await reader.next()
        if part is None:
            raise BadRequest("upload body has no field named 'file'")
        params = disposition_params(part.headers.get("Content-Disposition", ""))
        if isinstance(part, BodyPartReader) and params.get("name") == "file":
            break
        await part.release()
    filename = params.get("filename*") or params.get("filename")
    if not filename:
        raise BadRequest("the 'file' field needs a filename: the path to write, relative to /app")
    parts = split_path(filename)
    if not parts:
        raise BadRequest(f"filename {filename!r} names the work directory itself, not a file")

    agent = _agent(call)
    written = await (_receive_agent(call, agent, part, parts) if agent else _receive(call, part, parts))
    call.metrics.file_bytes.labels("upload").inc(written)
    return web.json_response({"message": f"File '{filename}' uploaded successfully.", "size": written})


async def _receive(call: Call, part: BodyPartReader, parts: tuple[str, ...]) -> int:
    try:
        return await _receive_into(call, part, parts)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage(
                f"upload of {display(parts)}: no space left for sandbox {call.sandbox} (its disk limit, or the "
                "host's disk, is full); nothing was written"
            ) from e
        raise


async def _receive_into(call: Call, part: BodyPartReader, parts: tuple[str, ...]) -> int:
    loop = asyncio.get_running_loop()
    limit = call.config.upload_limit
    workdir = call.workdir()
    with WorkDir(workdir) as wd:
        parent = await loop.run_in_executor(None, wd.ensure_parent, parts)
        try:
            fd, temp = wd.create_temp(parent)
            committed = False
            try:
                written = 0
                async with call.uploads.upload(call.sandbox_id, workdir, parts, call.sandbox) as ticket:
                    while chunk := await part.read_chunk(_CHUNK):
                        written += len(chunk)
                        if written > limit:
                            raise PayloadTooLarge(
                                f"upload of {display(parts)} is larger than the limit of {limit} bytes"
                            )
                        await ticket.take(len(chunk))
                        await loop.run_in_executor(None, _write_all, fd, chunk)
                    os.close(fd)
                    fd = -1
                    wd.commit(parent, temp, parts)
                    committed = True
                    ticket.commit(written)
            finally:
                if fd >= 0:
                    os.close(fd)
                if not committed:
                    wd.discard(parent, temp)
        finally:
            os.close(parent)
    return written


async def download(call: Call) -> web.StreamResponse:
    parts = split_path(call.path)
    if agent := _agent(call):
        return await _download_agent(call, agent, parts)
    with WorkDir(call.workdir()) as wd:
        fd, size = wd.open_file(parts)
    try:
        name = urllib.parse.quote(parts[-1], safe="", errors="surrogateescape")
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
            }
        )
        resp.content_length = size
        await resp.prepare(call.request)
        loop = asyncio.get_running_loop()
        sent = 0
        while sent < size:
            chunk = await loop.run_in_executor(None, os.pread, fd, min(_CHUNK, size - sent), sent)
            if not chunk:
                break
            await resp.write(chunk)
            sent += len(chunk)
        call.metrics.file_bytes.labels("download").inc(sent)
        if sent < size:
            # The file shrank while we sent it: close the connection so the
            # client sees a short body instead of a silently different file.
            resp.force_close()
        await resp.write_eof()
        return resp
    finally:
        os.close(fd)


def _list(root: Path, parts: tuple[str, ...]) -> list[FileInfo]:
    with WorkDir(root) as wd:
        return wd.list(parts)


async def list_dir(call: Call) -> web.Response:
    parts = split_path(call.path)
    if agent := _agent(call):
        return web.json_response([e.to_json() for e in await _list_agent(call, agent, parts)])
    entries = await asyncio.to_thread(_list, call.workdir(), parts)
    return web.json_response([e.to_json() for e in entries])


async def exists(call: Call) -> web.Response:
    parts = split_path(call.path)
    if agent := _agent(call):
        found = await _exists_agent(call, agent, parts)
        return web.json_response({"path": call.path, "exists": found})
    with WorkDir(call.workdir()) as wd:
        found = wd.exists(parts)
    return web.json_response({"path": call.path, "exists": found})


# ---------------------------------------------------------------------- through the sandbox's agent


def _agent(call: Call) -> AgentBackend | None:
    return call.backend if isinstance(call.backend, AgentBackend) else None


def v1_path(parts: tuple[str, ...]) -> str:
    """The agent's ``/v1/files`` path of a confined path (one segment, ``/`` as ``%2F``, as upstream's client)."""
    return "/v1/files/" + urllib.parse.quote("/".join(parts), safe="", errors="surrogateescape")


async def agent_failure(resp: AgentResponse, parts: tuple[str, ...], call: Call) -> SandboxdError:
    """The agent's error answer as the router's (its message is the sandbox's, never the host's)."""
    try:
        answer = await resp.json() if resp.status >= 400 else {}
    except AgentError:
        answer = {}
    finally:
        resp.release()
    where = display(parts)
    if resp.status == 403:
        return AccessDenied(f"Access denied: {where} leads outside the work directory")
    if resp.status == 404:
        return NotFound(f"{where}: no such file or directory")
    if resp.status in (400, 409):
        return Conflict(f"{where}: {answer.get('message') if isinstance(answer, dict) else 'conflict'}")
    if resp.status == 507:
        return InsufficientStorage(f"upload of {where}: no space left for sandbox {call.sandbox} (its disk limit "
                                   "is full); nothing was written")
    return ExecFailed(f"the sandboxd agent of sandbox {call.sandbox} failed ({resp.status}); retry later")


async def _receive_agent(call: Call, agent: AgentBackend, part: BodyPartReader, parts: tuple[str, ...]) -> int:
    limit = call.config.upload_limit
    written = 0
    async with call.uploads.upload(call.sandbox_id, agent.workdir(), parts, call.sandbox) as ticket:
        async def body() -> AsyncIterator[bytes]:
            nonlocal written
            while chunk := await part.read_chunk(_CHUNK):
                written += len(chunk)
                if written > limit:
                    raise PayloadTooLarge(f"upload of {display(parts)} is larger than the limit of {limit} bytes")
                await ticket.take(len(chunk))
                yield chunk

        try:
            resp = await agent.pool.request(agent.target.ip, "PUT", v1_path(parts),
                                            headers={"Content-Type": "application/octet-stream"}, body=body())
        except AgentError as e:
            raise ExecFailed(f"the sandboxd agent of sandbox {call.sandbox} went away during the upload; "
                             "nothing was written") from e
        if resp.status != 204:
            raise await agent_failure(resp, parts, call)
        resp.release()
        ticket.commit(written)
    return written


async def _download_agent(call: Call, agent: AgentBackend, parts: tuple[str, ...]) -> web.StreamResponse:
    resp = await agent.pool.request(agent.target.ip, "GET", v1_path(parts))
    try:
        if resp.status != 200:
            raise await agent_failure(resp, parts, call)
        if resp.headers.get("content-type", "").startswith("application/json"):
            raise NotFound(f"{display(parts)} is a directory")
        name = urllib.parse.quote(parts[-1] if parts else "app", safe="", errors="surrogateescape")
        out = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                          "Content-Disposition": f"attachment; filename*=UTF-8''{name}"})
        if "content-length" in resp.headers:
            out.content_length = int(resp.headers["content-length"])
        await out.prepare(call.request)
        sent = 0
        async for chunk in resp.iter():
            await out.write(chunk)
            sent += len(chunk)
        call.metrics.file_bytes.labels("download").inc(sent)
        await out.write_eof()
        return out
    finally:
        resp.release()


async def list_entries(call: Call, agent: AgentBackend, parts: tuple[str, ...]) -> dict[str, Any] | None:
    """The agent's listing of a directory (None: ``parts`` is a file)."""
    resp = await agent.pool.request(agent.target.ip, "GET", v1_path(parts))
    if resp.status != 200:
        raise await agent_failure(resp, parts, call)
    if not resp.headers.get("content-type", "").startswith("application/json"):
        resp.release()  # a file's bytes: not read, so the connection is reset
        return None
    try:
        listing = await resp.json()
    finally:
        resp.release()
    return listing if isinstance(listing, dict) else {"entries": []}


async def _list_agent(call: Call, agent: AgentBackend, parts: tuple[str, ...]) -> list[FileInfo]:
    listing = await list_entries(call, agent, parts)
    if listing is None:
        raise NotFound(f"{display(parts)} is not a directory")
    out = []
    for e in listing.get("entries") or []:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            when = datetime.fromisoformat(str(e["modified_at"]).replace("Z", "+00:00")).timestamp()
            out.append(FileInfo(name=str(e["name"]), size=int(e["size"]),
                                type="directory" if e["type"] == "directory" else "file", mod_time=when))
    return out


async def _exists_agent(call: Call, agent: AgentBackend, parts: tuple[str, ...]) -> bool:
    resp = await agent.pool.request(agent.target.ip, "HEAD", v1_path(parts))
    if resp.status == 200:
        resp.release()
        return True
    if resp.status == 404:
        resp.release()
        return False
    raise await agent_failure(resp, parts, call)
