"""``turbok store check`` and ``turbok store repair``: find and mend a damaged store of this home.

``check`` reads ``<home>/store.db`` without changing it and prints one line per
finding (damaged pages, bad rows by name, a revision counter below the stored
resourceVersions). Exit codes: 0 sound, 3 damaged, 1 an error.

``repair`` keeps every good object: the damaged file stays beside the new one
(``store.db.damaged-<stamp>``), bad rows go to ``store-quarantine-<stamp>.jsonl``
(0600), and the revision jumps past every version handed out when the counter
could not be trusted (``turbok.store.repair``). It refuses while a control plane
holds the home, and holds the home's lock itself while it works, so none can start.
"""

from __future__ import annotations

import typer

from turbok.cli.output import fail, say

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True)

#: Exit code of `turbok store check` for a damaged store.
DAMAGED = 3


@app.command("check")
def check() -> None:
    """Check this home's store: SQLite's integrity, every row, the revision counter."""
    from turbok.embedded.lock import holder
    from turbok.home import home
    from turbok.store import repair

    where = home()
    report = repair.check(where.store)
    pid = holder(where)
    if pid is not None:
        say(f"a control plane (pid {pid or 'unknown'}) holds {where.root}: this is the store as committed so far",
            style="dim")
    for line in report.lines():
        say(line)
    if report.ok:
        say(f"{where.store} is sound")
        return
    say(f"{where.store} is damaged: stop the control plane (`turbok down`) and run `turbok store repair`, "
        "which keeps every good object")
    raise typer.Exit(DAMAGED)


@app.command("repair")
def repair_() -> None:
    """Rebuild this home's store from its good objects; bad rows are kept aside in a file."""
    from turbok.embedded.lock import HomeLock, HomeLocked
    from turbok.home import home
    from turbok.store import repair

    where = home()
    if not where.store.exists():
        fail(f"no store at {where.store}")
    try:
        lock = HomeLock.acquire(where)
    except HomeLocked as e:
        fail(f"a control plane (pid {e.pid or 'unknown'}) holds {where.root}: stop it (`turbok down`) "
             "before repairing its store")
    with lock:
        done = repair.repair(where.store)
    if done is None:
        say(f"{where.store} is sound: nothing to repair")
        return
    for line in done.report.lines():
        say(line)
    say(f"kept {len(done.report.good)} good objects; revision {done.revision}")
    if done.quarantine is not None:
        say(f"bad rows: {done.quarantine}")
    say(f"the damaged store is kept as {done.backup}")
