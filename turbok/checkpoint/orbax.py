"""Orbax users switch by configuration: the same manager API, turbok's tiers underneath.

Two ways in:

1. ``turbok.checkpoint.orbax.CheckpointManager(job, options=ocp.CheckpointManagerOptions(...))``
   in place of ``ocp.CheckpointManager(directory, options=...)``: the same
   methods (``save(step, args=ocp.args.StandardSave(state), metrics=...)``,
   ``restore(step, args=ocp.args.StandardRestore(abstract_state))``,
   ``latest_step``, ``all_steps``, ``best_step``, ``should_save``,
   ``reached_preemption``, ``wait_until_finished``, ``delete``, ``close``)
   and the same options (``save_interval_steps``, ``save_on_steps``,
   ``should_save_fn``, ``max_to_keep``, ``keep_period``,
   ``keep_time_interval``, ``best_fn``, ``best_mode``,
   ``keep_checkpoints_without_metrics``, ``enable_async_checkpointing``).
   Steps live in memory, local disk, peers and object storage, replicated and
   backed up by the node agents; ``latest_step`` sees all of them.
   Items: ``StandardSave``/``PyTreeSave`` (pytrees of ``jax.Array``, numpy
   arrays, scalars), ``JsonSave``, and ``Composite`` of those.
2. ``TurbokCheckpointHandler``: an Orbax ``AsyncCheckpointHandler`` for
   ``ocp.CheckpointManager(directory, item_handlers=...)`` users who keep
   Orbax's own manager: the item's arrays go to turbok (through jax.py) and the
   item directory only holds a pointer (``turbok.json``). Orbax then owns the
   list of steps and their deletion; turbok's node retention governs the
   tiers. Use it with ``args=TurbokSave(tree)`` / ``TurbokRestore(abstract)``.

Importing this module imports orbax-checkpoint (a dev extra).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from turbok.checkpoint import jax as tjax
from turbok.checkpoint.errors import CheckpointError
from turbok.checkpoint.manager import CheckpointManager as _Manager
from turbok.checkpoint.retention import JobRetention

__all__ = ["CheckpointManager", "TurbokCheckpointHandler", "TurbokRestore", "TurbokSave"]

_DEFAULT = "default"
_JSON = "__json__"


def _retention(options: Any) -> JobRetention | None:
    interval = options.keep_time_interval
    if options.max_to_keep is None and not options.keep_period and interval is None:
        return None
    return JobRetention(
        max_to_keep=options.max_to_keep,
        keep_period=options.keep_period,
        keep_time_interval=interval.total_seconds() if interval is not None else None,
        best_fn=options.best_fn,
        best_mode=options.best_mode,
        keep_checkpoints_without_metrics=options.keep_checkpoints_without_metrics,
    )


def _encode(args: Any) -> Any:
    if isinstance(args, ocp.args.JsonSave):
        return {_JSON: json.dumps(args.item)}
    if isinstance(args, ocp.args.StandardSave | ocp.args.PyTreeSave):
        return args.item
    raise CheckpointError(f"{type(args).__name__}: use StandardSave, PyTreeSave, JsonSave or a Composite of them")


def _like(args: Any) -> Any:
    if isinstance(args, ocp.args.JsonRestore):
        return {_JSON: ""}
    if isinstance(args, ocp.args.StandardRestore | ocp.args.PyTreeRestore):
        if args.item is None:
            raise CheckpointError("restore needs the target structure: StandardRestore(abstract_state)")
        return args.item
    raise CheckpointError(f"{type(args).__name__}: use StandardRestore, PyTreeRestore, JsonRestore or a Composite of them")


def _names(composite: Any) -> list[str]:
    return [str(name) for name in composite.keys()]  # noqa: SIM118 - a Composite is not a dict


def _decode(args: Any, tree: Any) -> Any:
    return json.loads(tree[_JSON]) if isinstance(args, ocp.args.JsonRestore) else tree


class CheckpointManager:
    """``ocp.CheckpointManager``'s API over turbok's tiers; ``job`` names the checkpoints."""

    def __init__(self, job: str, options: Any = None, *, agent: str | None = None, rank: int | None = None,
                 world_size: int | None = None, token: str = "", durable: str = "disk") -> None:
        self.options = options if options is not None else ocp.CheckpointManagerOptions()
        o = self.options
        self._manager = _Manager(
            job,
            rank=jax.process_index() if rank is None else rank,
            world_size=jax.process_count() if world_size is None else world_size,
            agent=agent, token=token, durable=durable, retention=_retention(o),
            save_interval_steps=o.save_interval_steps,
        )

    @property
    def manager(self) -> _Manager:
        """The turbok manager underneath (events, metrics, tiers)."""
        return self._manager

    # -- saving ---------------------------------------------------------------------------------
    def should_save(self, step: int) -> bool:
        m, o = self._manager, self.options
        if m.reached_preemption(step):
            return True
        if o.should_save_fn is not None:
            return bool(o.should_save_fn(step, m.latest_step()))
        if o.save_on_steps and step in o.save_on_steps:
            return True
        return bool(step % max(1, int(o.save_interval_steps)) == 0)

    def save(self, step: int, items: Any = None, save_kwargs: Any = None, metrics: Any = None, force: bool = False,
             args: Any = None, custom_metadata: Any = None) -> bool:
        if not force and not self.should_save(step):
            return False
        args = args if args is not None else items
        if args is None:
            raise CheckpointError("save needs args, e.g. ocp.args.StandardSave(state)")
        if isinstance(args, ocp.args.Composite):
            tree = {name: _encode(args[name]) for name in _names(args)}
        else:
            tree = {_DEFAULT: _encode(args)}
        flat_metrics = {k: float(v) for k, v in (metrics or {}).items()}
        future = tjax.save(self._manager, step, tree, metrics=flat_metrics or None)
        if not self.options.enable_async_checkpointing or self._manager.reached_preemption(step):
            future.result()
        return True

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def check_for_errors(self) -> None:
        self._manager._raise_unreported()

    def is_saving_in_progress(self) -> bool:
        return self._manager.is_saving_in_progress()

    def reached_preemption(self, step: int) -> bool:
        return self._manager.reached_preemption(step)

    def install_preemption_handler(self) -> None:
        self._manager.install_preemption_handler()

    # -- restoring ------------------------------------------------------------------------------
    def restore(self, step: int | None = None, items: Any = None, restore_kwargs: Any = None,
                directory: Any = None, args: Any = None) -> Any:
        args = args if args is not None else items
        if args is None:
            raise CheckpointError("restore needs args, e.g. ocp.args.StandardRestore(abstract_state)")
        if isinstance(args, ocp.args.Composite):
            like = {name: _like(args[name]) for name in _names(args)}
            _, tree = tjax.restore(self._manager, like, step)
            return ocp.args.Composite(**{name: _decode(args[name], tree[name]) for name in _names(args)})
        _, tree = tjax.restore(self._manager, {_DEFAULT: _like(args)}, step)
        return _decode(args, tree[_DEFAULT])

    # -- steps ----------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self, read: bool = False) -> list[int]:
        return self._manager.all_steps()

    def best_step(self) -> int | None:
        o = self.options
        scored = []
        for s in self._manager.steps():
            if s.complete and s.metrics:
                scored.append((float(o.best_fn(s.metrics)) if o.best_fn else 0.0, s.step))
        if not scored or o.best_fn is None:
            return self.latest_step()
        return (max if o.best_mode == "max" else min)(scored)[1]

    def metrics(self, step: int) -> dict[str, float] | None:
        for s in self._manager.steps():
            if s.step == step:
                return s.metrics or None
        return None

    def delete(self, step: int) -> None:
        self._manager.delete(step)

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- Orbax's own manager, turbok underneath ----------------------------------------------------------
@dataclasses.dataclass
class TurbokSave(ocp.args.CheckpointArgs):  # type: ignore[misc]
    item: Any


@dataclasses.dataclass
class TurbokRestore(ocp.args.CheckpointArgs):  # type: ignore[misc]
    item: Any = None


_STEP = re.compile(r"(\d+)")


def _step_of(directory: Path) -> int:
    """Orbax writes an item into ``<root>/<step>[.orbax-checkpoint-tmp-...]/<item>``."""
    for part in (directory.parent.name, directory.name):
        found = _STEP.match(part)
        if found:
            return int(found.group(1))
    raise CheckpointError(f"{directory}: cannot tell the step from Orbax's directory name")


class TurbokCheckpointHandler(ocp.AsyncCheckpointHandler):  # type: ignore[misc]
    """An Orbax item handler that keeps the arrays in turbok's tiers and a pointer in the directory."""

    def __init__(self, manager: _Manager) -> None:
        self.manager = manager

    async def async_save(self, directory: Any, args: TurbokSave) -> list[Any]:
        path = Path(str(directory))
        step = _step_of(path)
        saved = tjax.save(self.manager, step, {_DEFAULT: args.item})  # returns at once: references only

        async def commit() -> None:  # run by Orbax once the item directory exists
            saved.result()
            (path / "turbok.json").write_text(json.dumps({"job": self.manager.job, "step": step, "rank": self.manager.rank}))

        return [ocp.future.CommitFutureAwaitingContractedSignals(commit(), name="turbok_save")]

    def save(self, directory: Any, args: TurbokSave) -> None:
        path = Path(str(directory))
        tjax.save(self.manager, _step_of(path), {_DEFAULT: args.item}).result()
        (path / "turbok.json").write_text(json.dumps({"job": self.manager.job, "step": _step_of(path), "rank": self.manager.rank}))

    def restore(self, directory: Any, args: TurbokRestore | None = None) -> Any:
        pointer = json.loads((Path(str(directory)) / "turbok.json").read_text())
        if args is None or args.item is None:
            raise CheckpointError("TurbokRestore needs the target structure (abstract arrays with shardings)")
        _, tree = tjax.restore(self.manager, {_DEFAULT: args.item}, int(pointer["step"]))
        return tree[_DEFAULT]

    def metadata(self, directory: Any) -> Any:
        return None

    def finalize(self, directory: Any) -> None:
        pass

    def close(self) -> None:
        pass


ocp.args.register_with_handler(TurbokCheckpointHandler, for_save=True)(TurbokSave)
ocp.args.register_with_handler(TurbokCheckpointHandler, for_restore=True)(TurbokRestore)
