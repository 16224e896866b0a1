"""The `/admin/status` document (docs/design.md §5), built from the switchers' read-only views.

`status_document` is the one place that shapes it: the admin route, `aiollmux status`
and the event stream all read the same dict.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiollmux.switcher import GroupView, MemberView

if TYPE_CHECKING:
    from aiollmux.multiplexer import Multiplexer


def status_document(mux: Multiplexer) -> dict[str, Any]:
    views = {name: switcher.snapshot() for name, switcher in mux.switchers.items()}
    groups = {name: _group(view) for name, view in views.items()}
    models: dict[str, dict[str, Any]] = {}
    for model in sorted(mux.config.models.values(), key=lambda m: m.id):
        member = views[model.group].members[model.id]
        models[model.id] = {
            "port": model.port,
            "group": model.group,
            "aliases": list(model.aliases),
            **_counts(member),
            "memory_gb": model.memory_gb,
        }
    # Removed from the configuration but still draining or being put to sleep.
    for view in views.values():
        for name, member in view.members.items():
            if name not in models and member.retired:
                models[name] = {
                    "port": member.config.port,
                    "group": view.group,
                    "aliases": [],
                    **_counts(member),
                    "memory_gb": member.config.memory_gb,
                    "removed": True,
                }
    default = groups["default"]
    return {
        "state": default["state"],
        "active_model": default["active_model"],
        "switching": default["switching"],
        "groups": groups,
        "models": models,
        "switch_costs": [
            {"from": a, "to": b, "seconds": round(e.seconds, 3), "samples": e.samples}
            for a, b, e in mux.costs.items()
        ],
        "config": {
            "path": mux.config.source,
            "generation": mux.generation,
            "loaded_at": mux.loaded_at.isoformat(timespec="seconds"),
            "last_reload_error": mux.last_reload_error,
            "restart_required": mux.restart_required,
        },
        # For leak hunting (the soak test reads it): both settle back after traffic.
        "runtime": {
            "asyncio_tasks": len(asyncio.all_tasks()),
            "hooks_running": mux.hooks.running,
        },
    }


def _group(view: GroupView) -> dict[str, Any]:
    switching = view.switching
    return {
        "state": view.state,
        "active_model": view.active_model,
        "switching": None
        if switching is None
        else {"from": switching.source, "to": switching.target},
        "memory_gb": view.memory_gb,
        "memory_used_gb": _gb(view.memory_used_gb),
        "active_models": list(view.active_models),
    }


def _gb(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _counts(member: MemberView) -> dict[str, Any]:
    return {"in_flight": member.in_flight, "queued": member.queued, "state": member.state}
