"""A stand-in for a sandbox's container: upstream python-runtime's ``POST /execute`` on HOST:PORT.

``python tests/kube/standin.py HOST PORT`` serves until killed. It runs each command with ``sh -c`` and
answers ``{"stdout", "stderr", "exit_code"}`` as the runtime of the official client's images does, and
``GET /whoami`` with the address it listens on (tests check where the router sent them).
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


async def execute(request: web.Request) -> web.Response:
    body = await request.json()
    proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", body["command"], stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), body.get("timeout_seconds") or 30)
    return web.json_response({"stdout": out.decode(), "stderr": err.decode(), "exit_code": proc.returncode})


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"address": f"{host}:{port}", "authorization": request.headers.get("Authorization"),
                                  "headers": sorted(request.headers)})

    app = web.Application()
    app.add_routes([web.post("/execute", execute), web.get("/whoami", whoami)])
    web.run_app(app, host=host, port=port, print=lambda *_: print("serving", flush=True), access_log=None)


if __name__ == "__main__":
    main()
