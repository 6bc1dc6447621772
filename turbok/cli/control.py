"""``turbok serve``, ``up``, ``down``, ``status``: the embedded control plane's lifecycle."""

from __future__ import annotations

import typer

from turbok.cli.output import console, fail, print_data

__all__ = ["register"]


def serve(
    port: int = typer.Option(0, help="API port on 127.0.0.1 (0: any free port)."),
    router_port: int = typer.Option(0, help="Router port on 127.0.0.1 (0: any free port)."),
) -> None:
    """Run the control plane in the foreground until Ctrl-C or SIGTERM."""
    import asyncio
    import logging
    import signal

    from turbok.embedded.controlplane import ControlPlane
    from turbok.home import home

    if not logging.getLogger().handlers or logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await ControlPlane(home(), api_port=port, router_port=router_port).run_forever(stop)

    asyncio.run(main())


def up(timeout: float = typer.Option(60.0, help="Seconds to wait for the control plane to serve.")) -> None:
    """Start the control plane in the background and print where its kubeconfig is."""
    from turbok.embedded import daemon
    from turbok.home import home

    endpoints = daemon.up(home(), timeout=timeout)
    console.print(f"turbok is up: api {endpoints['api']}, router {endpoints['router']}")
    console.print(f"kubeconfig: {endpoints['kubeconfig']}")
    console.print(f"  export KUBECONFIG={endpoints['kubeconfig']}", style="dim")


def down(
    timeout: float = typer.Option(30.0, help="Seconds to wait for a clean stop."),
    stop_sandboxes: bool = typer.Option(False, "--stop-sandboxes", help="Also stop every sandbox (disks are kept)."),
) -> None:
    """Stop the background control plane; sandboxes keep running and are re-adopted on `up`."""
    from turbok.embedded import daemon
    from turbok.home import home

    if daemon.down(home(), timeout=timeout):
        console.print("turbok is down")
    else:
        console.print("turbok was not running")
    if stop_sandboxes:
        count = daemon.stop_sandboxes(home())
        console.print(f"stopped {count} sandbox{'es' if count != 1 else ''}")


def status(output: str = typer.Option("text", "--output", "-o", help="text or json")) -> None:
    """Where the control plane serves, if it does."""
    from turbok.embedded import daemon
    from turbok.home import home

    info = daemon.status(home())
    if output == "json":
        print_data(info, "json")
    elif output == "text":
        if not info["running"]:
            console.print(f"turbok is not running (home {info['home']})")
        else:
            for key in ("api", "router", "kubeconfig", "pid", "home"):
                console.print(f"{key:>10}: {info[key]}")
    else:
        fail(f"unknown output format {output!r}: use text or json")
    if not info["running"]:
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
