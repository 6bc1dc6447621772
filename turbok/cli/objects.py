"""``turbok get``, ``apply`` and ``delete``: kubectl's everyday verbs for turbok's kinds.

They speak the Kubernetes API through ``turbok.client`` with the turbok
kubeconfig (or ``--kubeconfig``), so they work on the embedded engine and on
a cluster alike. ``apply`` follows kubectl's client-side apply: create, or a
merge patch computed from the last-applied configuration, which it records.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from turbok.cli.output import cell, console, fail, print_data, say, say_error

if TYPE_CHECKING:
    from turbok.client.rest import RestClient

__all__ = ["register"]

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

KubeconfigOpt = typer.Option(None, "--kubeconfig", help="Kubeconfig (default: $KUBECONFIG, then turbok's own, then ~/.kube/config).")
ContextOpt = typer.Option(None, "--context", help="Kubeconfig context.")
NamespaceOpt = typer.Option(None, "--namespace", "-n", help="Namespace (default: the context's).")


def connect(kubeconfig: Path | None, context: str | None) -> RestClient:
    from turbok.client.kubeconfig import load_kubeconfig
    from turbok.client.rest import RestClient

    # turbok's own kubeconfig (from `turbok up`) comes before ~/.kube/config
    return RestClient(load_kubeconfig(kubeconfig, context, turbok_home=True))


def _documents(paths: list[Path]) -> list[dict[str, Any]]:
    import yaml

    files: list[Path] = []
    for p in paths:
        if str(p) == "-":
            files.append(p)
        elif p.is_dir():
            files += sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml", ".json"))
        elif p.exists():
            files.append(p)
        else:
            fail(f"{p}: no such file or directory")
    docs: list[dict[str, Any]] = []
    for f in files:
        text = sys.stdin.read() if str(f) == "-" else f.read_text()
        try:
            loaded = list(yaml.safe_load_all(text))
        except yaml.YAMLError as e:
            fail(f"{f}: not valid YAML: {str(e).splitlines()[0]}")
        for doc in loaded:
            if doc is None:
                continue
            if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
                fail(f"{f}: every document needs apiVersion and kind")
            if doc["kind"].endswith("List") and isinstance(doc.get("items"), list):
                docs += doc["items"]
            else:
                docs.append(doc)
    return docs


def _deletions(original: dict[str, Any], modified: dict[str, Any]) -> dict[str, Any]:
    """Fields the user removed since the last apply, as merge-patch nulls."""
    out: dict[str, Any] = {}
    for key, value in original.items():
        if key not in modified:
            out[key] = None
        elif isinstance(value, dict) and isinstance(modified[key], dict) and (sub := _deletions(value,
                                                                                              modified[key])):
            out[key] = sub
    return out


def _changes(current: Any, modified: dict[str, Any]) -> dict[str, Any]:
    """Fields of ``modified`` that differ from the live object."""
    out: dict[str, Any] = {}
    for key, value in modified.items():
        live = current.get(key) if isinstance(current, dict) else None
        if isinstance(value, dict) and isinstance(live, dict):
            if sub := _changes(live, value):
                out[key] = sub
        elif live != value:
            out[key] = value
    return out


def last_applied(doc: dict[str, Any]) -> str:
    """The last-applied annotation exactly as kubectl writes it, so turbok and kubectl can take turns.

    kubectl records the manifest without its own annotation (leaving an empty ``annotations``
    map), as Go's encoder writes it: sorted keys, compact, HTML characters escaped, a newline.
    """
    recorded = json.loads(json.dumps(doc))
    annotations = recorded.setdefault("metadata", {}).get("annotations") or {}
    recorded["metadata"]["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    text = json.dumps(recorded, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") + "\n"


def three_way_patch(original: dict[str, Any], modified: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """kubectl's three-way JSON merge patch: the user's changes, plus what they stopped declaring."""
    from turbok.api.patch import merge_patch

    patch: dict[str, Any] = merge_patch(_changes(current, modified), _deletions(original, modified))
    # merge_patch drops the nulls it applies; put the deletions back as explicit nulls.
    def put_nulls(target: dict[str, Any], dels: dict[str, Any]) -> None:
        for key, value in dels.items():
            if value is None:
                target[key] = None
            else:
                put_nulls(target.setdefault(key, {}), value)

    put_nulls(patch, _deletions(original, modified))
    return patch


def get(
    kind: str = typer.Argument(..., help="Kind: sandbox, sandboxclaim, sandboxtemplate, swp, ns ..."),
    name: str | None = typer.Argument(None),
    namespace: str | None = NamespaceOpt,
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A"),
    selector: str | None = typer.Option(None, "--selector", "-l", help="Label selector."),
    output: str = typer.Option("table", "--output", "-o", help="table, yaml, json or name"),
    kubeconfig: Path | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """Show objects, as a table or in full."""
    from rich.table import Table

    with connect(kubeconfig, context) as api:
        res = api.resource(kind)
        ns = None if (all_namespaces or not res.namespaced) else (namespace or api.config.namespace)
        table = output == "table"
        if name:
            data = api.get(res, name, ns, table=table)
        else:
            data = api.list(res, ns, label_selector=selector, table=table)
    if output in ("yaml", "json"):
        print_data(data, output)
        return
    if output == "name":
        items = [data] if name else data.get("items", [])
        for item in items:
            say(f"{res.plural}.{res.group}/{item['metadata']['name']}" if res.group
                else f"{res.plural}/{item['metadata']['name']}")
        return
    if output != "table":
        fail(f"unknown output format {output!r}: use table, yaml, json or name")
    if not data.get("rows"):
        say(f"No {res.plural} found" + (f" in namespace {ns}." if ns else "."))
        return
    view = Table(box=None, header_style="bold", pad_edge=False)
    show_ns = all_namespaces and res.namespaced
    if show_ns:
        view.add_column("NAMESPACE")
    for col in data["columnDefinitions"]:
        if col.get("priority", 0) == 0:
            view.add_column(col["name"].upper())
    for row in data["rows"]:
        cells = [("" if c is None else str(c)) for c, col in zip(row["cells"], data["columnDefinitions"], strict=False)
                 if col.get("priority", 0) == 0]
        if show_ns:
            cells.insert(0, row.get("object", {}).get("metadata", {}).get("namespace", ""))
        view.add_row(*(cell(c) for c in cells))  # cells carry status text a sandbox may have chosen
    console.print(view)


def apply(
    filename: list[Path] = typer.Option(..., "--filename", "-f", help="File, directory or - for stdin."),
    namespace: str | None = NamespaceOpt,
    kubeconfig: Path | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """Create or update objects from YAML, like `kubectl apply`."""
    from turbok.api.status import ApiError, NotFound

    docs = _documents(filename)
    failed = 0
    with connect(kubeconfig, context) as api:
        for doc in docs:
            md = doc.setdefault("metadata", {})
            label = f"{doc['kind'].lower()}/{md.get('name', '?')}"
            try:
                res = api.resource_for(doc["apiVersion"], doc["kind"])
                ns = (md.get("namespace") or namespace or api.config.namespace) if res.namespaced else None
                if namespace and md.get("namespace") and md["namespace"] != namespace:
                    raise ApiError(f"the namespace from the object ({md['namespace']}) does not match "
                                   f"--namespace ({namespace})")
                if res.namespaced:
                    md["namespace"] = ns
                md.setdefault("annotations", {})[LAST_APPLIED] = last_applied(doc)
                try:
                    current = api.get(res, md["name"], ns)
                except NotFound:
                    api.create(res, doc, ns, fieldValidation="Strict")
                    say(f"{label} created")
                    continue
                original = json.loads(current["metadata"].get("annotations", {}).get(LAST_APPLIED, "{}"))
                patch = three_way_patch(original, doc, current)
                if patch:
                    api.patch(res, md["name"], patch, ns, fieldValidation="Strict")
                    say(f"{label} configured")
                else:
                    say(f"{label} unchanged")
            except ApiError as e:
                failed += 1
                say_error(f"{label}: {e}")  # stderr, and no rich markup: messages hold [0]-style paths
    if failed:
        raise typer.Exit(1)


def delete(
    kind: str | None = typer.Argument(None),
    names: list[str] = typer.Argument(None),
    filename: list[Path] = typer.Option(None, "--filename", "-f"),
    namespace: str | None = NamespaceOpt,
    ignore_not_found: bool = typer.Option(False, "--ignore-not-found"),
    kubeconfig: Path | None = KubeconfigOpt,
    context: str | None = ContextOpt,
) -> None:
    """Delete objects by kind and name, or those in files."""
    from turbok.api.status import NotFound

    with connect(kubeconfig, context) as api:
        targets = []
        if filename:
            for doc in _documents(filename):
                res = api.resource_for(doc["apiVersion"], doc["kind"])
                md = doc.get("metadata") or {}
                targets.append((res, md.get("name", ""), md.get("namespace") or namespace or api.config.namespace))
        elif kind and names:
            res = api.resource(kind)
            targets = [(res, n, namespace or api.config.namespace) for n in names]
        else:
            fail("name the objects: `turbok delete KIND NAME...` or `turbok delete -f FILE`")
        for res, name, ns in targets:
            try:
                api.delete(res, name, ns if res.namespaced else None, propagation="Background")
                say(f'{res.kind.lower()} "{name}" deleted')
            except NotFound:
                if not ignore_not_found:
                    fail(f'{res.plural}.{res.group} "{name}" not found' if res.group else f'{res.plural} "{name}" not found')


def register(app: typer.Typer) -> None:
    app.command("get")(get)
    app.command("apply")(apply)
    app.command("delete")(delete)
