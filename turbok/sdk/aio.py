"""The asynchronous twin of ``turbok.sdk.client``: the same calls, awaited.

Everything but the I/O comes from ``turbok.sdk._calls``, so the twins behave
alike; only the methods that move bytes differ::

    async with AsyncSandboxConnection(router_url, token, "default", "box") as sb:
        result = await sb.commands.run("echo hi")
        async with await sb.commands.stream(["make"]) as run:
            async for frame in run:
                ...
        await sb.files.write("a.txt", b"x")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import IO, Any

import httpx

from turbok.sdk import _calls
from turbok.sdk.wire import CommandResult, FileInfo, OutputFrame, redact_url

__all__ = ["AsyncCommands", "AsyncExecStream", "AsyncFiles", "AsyncSandboxConnection"]


class AsyncSandboxConnection:
    """One sandbox through the router; see ``turbok.sdk.client.SandboxConnection``."""

    def __init__(
        self,
        router_url: str,
        token: str,
        namespace: str,
        name: str,
        *,
        timeout: float | None = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.url = redact_url(router_url.rstrip("/"))
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=router_url.rstrip("/") + "/",
            headers=_calls.headers(token, namespace, name),
            timeout=timeout,
            transport=transport,
        )
        self.commands = AsyncCommands(self)
        self.files = AsyncFiles(self)

    async def __aenter__(self) -> AsyncSandboxConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:  # never shows the token
        return f"AsyncSandboxConnection({self.url!r}, {self.namespace}/{self.name})"

    async def send(self, req: _calls.Request, *, stream: bool = False) -> httpx.Response:
        """Send one request; a non-2xx answer raises its ``RouterError``. Streamed answers: caller closes."""
        with _calls.transport_errors(self.url):
            built = self._http.build_request(req.method, req.endpoint, **req.send_kwargs(self.timeout))
            response = await self._http.send(built, stream=stream)
            if response.is_success:
                return response
            try:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) >= _calls.ERROR_BODY_LIMIT:
                        break
            finally:
                await response.aclose()
            raise _calls.error_for(response, body)

    async def health(self) -> dict[str, Any]:
        return dict((await self.send(_calls.Request("GET", ""))).json())


class AsyncCommands:
    def __init__(self, conn: AsyncSandboxConnection) -> None:
        self._conn = conn

    async def run(self, command: str, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        return _calls.parse_result(await self._conn.send(_calls.run_request(command, timeout)), check=check)

    async def stream(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> AsyncExecStream:
        req = _calls.stream_request(argv, env, cwd, timeout, stdin)
        return AsyncExecStream(await self._conn.send(req, stream=True), self._conn.url)


class AsyncExecStream:
    """``async for`` the output frames; then ``exit_code`` and ``timed_out`` are set."""

    def __init__(self, response: httpx.Response, url: str) -> None:
        self._response = response
        self._url = url
        self._sink = _calls.FrameSink()

    @property
    def exit_code(self) -> int | None:
        return self._sink.exit_code

    @property
    def timed_out(self) -> bool:
        return self._sink.timed_out

    async def __aenter__(self) -> AsyncExecStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()

    async def __aiter__(self) -> AsyncIterator[OutputFrame]:
        try:
            with _calls.transport_errors(self._url):
                async for chunk in self._response.aiter_raw():
                    for frame in self._sink.feed(chunk):
                        yield frame
            self._sink.finish()
        finally:
            await self.aclose()

    async def wait(self) -> int:
        async for _ in self:
            pass
        assert self.exit_code is not None
        return self.exit_code


class AsyncFiles:
    def __init__(self, conn: AsyncSandboxConnection) -> None:
        self._conn = conn

    async def read(self, path: str) -> bytes:
        return (await self._conn.send(_calls.read_request(path))).content

    async def read_to(self, path: str, destination: IO[bytes]) -> int:
        total = 0
        response = await self._conn.send(_calls.read_request(path), stream=True)
        try:
            with _calls.transport_errors(self._conn.url):
                async for chunk in response.aiter_bytes(_calls.CHUNK):
                    destination.write(chunk)
                    total += len(chunk)
        finally:
            await response.aclose()
        return total

    async def write(self, path: str, data: bytes | str | IO[bytes]) -> None:
        await (await self._conn.send(_calls.write_request(path, data))).aclose()

    async def list(self, path: str = "") -> list[FileInfo]:
        return _calls.parse_list(await self._conn.send(_calls.list_request(path)))

    async def exists(self, path: str) -> bool:
        return _calls.parse_exists(await self._conn.send(_calls.exists_request(path)))
