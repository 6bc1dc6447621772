"""``turbok operator`` and ``turbok router``: the Kubernetes engine's two processes (docs/kube.md).

Both read a kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``) or, inside a Pod, the
Pod's ServiceAccount. The Helm chart and deploy/ run them from one image.
"""

from __future__ import annotations

import typer

from turbok.cli.output import fail

__all__ = ["register"]

KubeconfigOpt = typer.Option(None, "--kubeconfig", help="Kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, "
                                                        "or the Pod's ServiceAccount).")
ContextOpt = typer.Option(None, "--context", help="Kubeconfig context (default: the current one).")


def _logging() -> None:
    import logging

    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def operator(
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    namespace: str | None = typer.Option(None, "--namespace", help="Namespace of the leader-election Lease "
                                         "(default: $POD_NAMESPACE, the Pod's, else turbok-system)."),
    leader_elect: bool = typer.Option(True, "--leader-elect/--no-leader-elect",
                                      help="Take the Lease before acting (several replicas: one acts)."),
    lease_duration: float = typer.Option(15.0, help="Seconds a Lease not renewed stays taken."),
    renew_deadline: float = typer.Option(10.0, help="Seconds the leader keeps trying to renew before it stops."),
    retry_period: float = typer.Option(2.0, help="Seconds between tries to take or renew the Lease."),
    qps: float = typer.Option(1000.0, help="Client-side rate limit: requests per second to the API server."),
    burst: int = typer.Option(2000, help="Client-side rate limit: requests allowed at once."),
    runtime_class: str = typer.Option("gvisor", help="runtimeClassName for Pods whose template names none "
                                      "('' leaves it unset)."),
    health_address: str = typer.Option("0.0.0.0:8081", help="host:port of /healthz, /readyz and /metrics "
                                       "('' for none)."),
    identity: str = typer.Option("", help="This replica's name in the Lease (default: hostname and a random suffix)."),
) -> None:
    """Run turbok's controllers against a Kubernetes cluster until SIGTERM."""
    import asyncio

    from turbok.client.errors import KubeconfigError
    from turbok.kube.operator import Operator, OperatorSettings, operator_namespace

    _logging()
    if lease_duration <= renew_deadline or renew_deadline <= retry_period or retry_period <= 0:
        fail("leader election needs lease-duration > renew-deadline > retry-period > 0")
    settings = OperatorSettings(kubeconfig=kubeconfig, context=context, namespace=namespace or operator_namespace(),
                                leader_elect=leader_elect, lease_duration=lease_duration,
                                renew_deadline=renew_deadline, retry_period=retry_period, qps=qps, burst=burst,
                                runtime_class=runtime_class, health_address=health_address, identity=identity)

    async def main() -> None:
        await Operator(settings).run()

    try:
        asyncio.run(main())
    except KubeconfigError as e:
        fail(str(e))


def router(
    kubeconfig: str | None = KubeconfigOpt,
    context: str | None = ContextOpt,
    address: str = typer.Option("0.0.0.0:8080", help="host:port to serve on."),
    token_file: str | None = typer.Option(None, "--token-file", help="File holding the router's own token "
                                          "(clients send it as 'Authorization: Bearer')."),
    token_review: bool = typer.Option(False, "--token-review/--no-token-review",
                                      help="Also accept Kubernetes tokens allowed to get the Sandbox "
                                           "(TokenReview and SubjectAccessReview)."),
) -> None:
    """Serve the sandbox router of a cluster: X-Sandbox-ID to the Sandbox's Pod IP and port."""
    from pathlib import Path

    from aiohttp import web

    from turbok.client.api import AsyncApi
    from turbok.client.errors import KubeconfigError
    from turbok.client.kubeconfig import load_kubeconfig
    from turbok.kube.router import ClusterRouter, RouterSettings, create_cluster_router_app

    _logging()
    token = ""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            fail(f"cannot read --token-file {token_file}: {e.strerror}")
    if not token and not token_review:
        fail("the router needs --token-file or --token-review: it never serves anonymously")
    host, _, port = address.rpartition(":")
    try:
        api = AsyncApi(load_kubeconfig(kubeconfig, context), qps=50, burst=100, user_agent="turbok-router")
    except KubeconfigError as e:
        fail(str(e))
    app = create_cluster_router_app(ClusterRouter(api, RouterSettings(token=token, token_review=token_review)))
    web.run_app(app, host=host or "0.0.0.0", port=int(port), access_log=None, print=None)  # noqa: S104


def register(app: typer.Typer) -> None:
    app.command("operator")(operator)
    app.command("router")(router)
