"""``turbok serve``, ``up``, ``down``, ``status``: the embedded control plane's lifecycle.

One control plane per home (an flock held for its life): a second ``serve`` or
``up`` on the same home exits 1 with one line naming the pid that serves it.
Ports are chosen once and kept in the home; ``--port``/``--router-port`` move them.
"""

from __future__ import annotations

import typer

from turbok.cli.output import fail, print_data, say

__all__ = ["register"]


_PORT_HELP = "{} port on 127.0.0.1, kept for later starts (default: the home's kept port; 0: a new free one)."
PortOpt = typer.Option(None, "--port", help=_PORT_HELP.format("API"))
RouterPortOpt = typer.Option(None, "--router-port", help=_PORT_HELP.format("Router"))
SimulatedGpusOpt = typer.Option(0, "--simulated-gpus", min=0, max=64,
                                help="Publish N simulated GPUs through DRA (gpu.nvidia.com; real GPUs are then not "
                                     "published), handed to containers as TURBOK_VISIBLE_DEVICES.")


def serve(port: int | None = PortOpt, router_port: int | None = RouterPortOpt,
          simulated_gpus: int = SimulatedGpusOpt) -> None:
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
        await ControlPlane(home(), api_port=port, router_port=router_port,
                           simulated_gpus=simulated_gpus).run_forever(stop)

    asyncio.run(main())


def up(
    timeout: float = typer.Option(60.0, help="Seconds to wait for the control plane to serve."),
    port: int | None = PortOpt,
    router_port: int | None = RouterPortOpt,
    simulated_gpus: int = SimulatedGpusOpt,
) -> None:
    """Start the control plane in the background and print where its kubeconfig is."""
    from turbok.embedded import daemon
    from turbok.home import home

    endpoints = daemon.up(home(), timeout=timeout, port=port, router_port=router_port, simulated_gpus=simulated_gpus)
    say(f"turbok is up: api {endpoints['api']}, router {endpoints['router']}")
    say(f"kubeconfig: {endpoints['kubeconfig']}")
    say(f"  export KUBECONFIG={endpoints['kubeconfig']}", style="dim")


def down(
    timeout: float = typer.Option(30.0, help="Seconds to wait for a clean stop."),
    stop_sandboxes: bool = typer.Option(False, "--stop-sandboxes", help="Also stop every sandbox (disks are kept)."),
) -> None:
    """Stop the background control plane; sandboxes keep running and are re-adopted on `up`."""
    from turbok.embedded import daemon
    from turbok.home import home

    if daemon.down(home(), timeout=timeout):
        say("turbok is down")
    else:
        say("turbok was not running")
    if stop_sandboxes:
        count = daemon.stop_sandboxes(home())  # under the home's lock: refuses if a control plane is back
        say(f"stopped {count} sandbox{'es' if count != 1 else ''}")


def status(output: str = typer.Option("text", "--output", "-o", help="text or json")) -> None:
    """Where the control plane serves, if it does."""
    from turbok.embedded import daemon
    from turbok.home import home

    info = daemon.status(home())
    if output == "json":
        print_data(info, "json")
    elif output == "text":
        if not info["running"]:
            say(f"turbok is not running (home {info['home']})")
        else:
            for key in ("api", "router", "kubeconfig", "pid", "home"):
                say(f"{key:>10}: {info[key]}")
    else:
        fail(f"unknown output format {output!r}: use text or json")
    if not info["running"]:
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
