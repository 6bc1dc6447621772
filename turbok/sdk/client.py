"""The synchronous client of the sandbox runtime API, over httpx.

Who calls it: the ``turbok sandbox`` CLI (exec, cp) and anyone with a router
URL and the router's token (the kubeconfig's ``turbok.dev/router`` extension, or
``<home>/router-token``; not the API token). It speaks only HTTP (``turbok.sdk.wire``), never imports the
server side; what each call sends and how answers are read lives in
``turbok.sdk._calls``, shared with the async twin ``turbok.sdk.aio``::

    with SandboxConnection(router_url, token, "default", "my-sandbox") as sb:
        result = sb.commands.run("echo hi", timeout=30)          # CommandResult
        with sb.commands.stream(["python", "-u", "train.py"]) as run:
            for frame in run:                                      # OutputFrame
                sys.stdout.buffer.write(frame.data)
        print(run.exit_code)
        sb.files.write("data/in.csv", b"a,b\\n")
        sb.files.read("data/in.csv"); sb.files.list("data"); sb.files.exists("x")

Errors are ``turbok.sdk.errors`` classes (one line each, from the router's
message); transport failures become ``TransportError``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

import httpx

from turbok.sdk import _calls
from turbok.sdk.wire import CommandResult, FileInfo, OutputFrame, redact_url

__all__ = ["Commands", "ExecStream", "Files", "SandboxConnection"]


class SandboxConnection:
    """One sandbox, reached through the router at ``router_url`` with the router's ``token``.

    The token travels in the ``Authorization`` header only, never in a URL or a message.
    ``timeout``: seconds for connecting and for answers other than commands' (None: no limit);
    commands wait for their own timeout plus a margin.
    """

    def __init__(
        self,
        router_url: str,
        token: str,
        namespace: str,
        name: str,
        *,
        timeout: float | None = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.namespace = namespace
        self.name = name
        #: The router URL as shown in messages (a token left in a retired capability URL is masked).
        self.url = redact_url(router_url.rstrip("/"))
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=router_url.rstrip("/") + "/",
            headers=_calls.headers(token, namespace, name),
            timeout=timeout,
            transport=transport,
        )
        self.commands = Commands(self)
        self.files = Files(self)

    def __enter__(self) -> SandboxConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:  # never shows the token
        return f"SandboxConnection({self.url!r}, {self.namespace}/{self.name})"

    def send(self, req: _calls.Request, *, stream: bool = False) -> httpx.Response:
        """Send one request; a non-2xx answer raises its ``RouterError``. Streamed answers: caller closes."""
        with _calls.transport_errors(self.url):
            built = self._http.build_request(req.method, req.endpoint, **req.send_kwargs(self.timeout))
            response = self._http.send(built, stream=stream)
            if response.is_success:
                return response
            try:
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) >= _calls.ERROR_BODY_LIMIT:
                        break
            finally:
                response.close()
            raise _calls.error_for(response, body)

    def health(self) -> dict[str, Any]:
        """The sandbox's health (``{"status": "ok", ...}``); raises if it is not Ready."""
        return dict(self.send(_calls.Request("GET", "")).json())


class Commands:
    def __init__(self, conn: SandboxConnection) -> None:
        self._conn = conn

    def run(self, command: str, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        """Run ``command`` with ``/bin/sh -c`` in /app; ``timeout`` seconds (router default 300) then exit 124.

        ``check``: raise ``CommandFailed`` (carrying the result) unless it exited 0.
        """
        return _calls.parse_result(self._conn.send(_calls.run_request(command, timeout)), check=check)

    def stream(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
    ) -> ExecStream:
        """Start ``argv`` (no shell) and stream its output; see ``ExecStream``."""
        req = _calls.stream_request(argv, env, cwd, timeout, stdin)
        return ExecStream(self._conn.send(req, stream=True), self._conn.url)


class ExecStream:
    """A running command's output. Iterate for ``OutputFrame``s; then ``exit_code`` and ``timed_out`` are set.

    Use as a context manager (or call ``close``): leaving early closes the
    connection and the router kills the command. ``wait()`` discards the rest
    of the output and returns the exit code.
    """

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

    def __enter__(self) -> ExecStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._response.close()

    def __iter__(self) -> Iterator[OutputFrame]:
        try:
            with _calls.transport_errors(self._url):
                for chunk in self._response.iter_raw():  # no chunk size: it would hold output back
                    yield from self._sink.feed(chunk)
            self._sink.finish()
        finally:
            self.close()

    def wait(self) -> int:
        for _ in self:
            pass
        assert self.exit_code is not None
        return self.exit_code


class Files:
    """Files in the sandbox's work directory (/app); paths are relative to it (or absolute under /app)."""

    def __init__(self, conn: SandboxConnection) -> None:
        self._conn = conn

    def read(self, path: str) -> bytes:
        return self._conn.send(_calls.read_request(path)).content

    def read_to(self, path: str, destination: IO[bytes]) -> int:
        """Stream a file into ``destination`` (not closed); the number of bytes written."""
        total = 0
        response = self._conn.send(_calls.read_request(path), stream=True)
        try:
            with _calls.transport_errors(self._conn.url):
                for chunk in response.iter_bytes(_calls.CHUNK):
                    destination.write(chunk)
                    total += len(chunk)
        finally:
            response.close()
        return total

    def write(self, path: str, data: bytes | str | IO[bytes]) -> None:
        """Write ``data`` to ``path`` atomically, creating directories; file objects are streamed."""
        self._conn.send(_calls.write_request(path, data)).close()

    def list(self, path: str = "") -> list[FileInfo]:
        return _calls.parse_list(self._conn.send(_calls.list_request(path)))

    def exists(self, path: str) -> bool:
        return _calls.parse_exists(self._conn.send(_calls.exists_request(path)))
