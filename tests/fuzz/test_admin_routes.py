"""Property-based fuzzing of the admin routes' bodies (/admin/switch, /admin/sleep) against
the real daemon: every answer is 200 exactly when the oracle says "ok", else the 4xx
OpenAI-shaped error the oracle names; nothing is proxied.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.support import (
    BOM,
    ERROR_STATUS,
    FUZZ,
    NAMES,
    PER_MODEL,
    REQUEST_TIMEOUT,
    Obj,
    json_keys,
    json_scalars,
    json_styles,
    json_values,
    names,
    one_in,
    start_lab,
)
from tests.support import Lab, running_daemon

# -- the admin routes ----------------------------------------------------------------------


@dataclass(frozen=True)
class AdminRequest:
    path: str  # /admin/switch or /admin/sleep
    data: bytes
    content_type: str | None


def admin_oracle(request: AdminRequest) -> str:
    """ "ok" or the error code docs/design.md §5 gives (the body is JSON in UTF-8, as RFC 8259
    §8.1 has it between systems; a UTF-8 BOM is skipped, UTF-16/32 are not guessed)."""
    document: Any = {}
    if request.data:
        try:
            document = json.loads(request.data.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return "invalid_json"
        if not isinstance(document, dict):
            return "invalid_json"
    if request.path == "/admin/switch":
        name = document.get("model")
        if not isinstance(name, str) or not name:
            return "model_required"
        return "ok" if name in NAMES else "model_not_found"
    group, name = document.get("group"), document.get("model")
    if name is not None:  # docs/design.md §8: one model, or one group, not both
        if not isinstance(name, str) or not name or group is not None:
            return "model_required"
        return "ok" if name in NAMES else "model_not_found"
    return "ok" if group is None or group == "default" else "invalid_request"


@st.composite
def admin_requests(draw: st.DrawFn) -> AdminRequest:
    path = draw(st.sampled_from(["/admin/switch", "/admin/sleep"]))
    kind = draw(st.sampled_from(["object", "object", "object", "value", "bytes", "empty"]))
    data = b""
    if kind == "object":
        members = list(draw(st.lists(st.tuples(json_keys, json_values), max_size=3)))
        if not one_in(draw, 4):
            members.append(("model", draw(names | json_scalars)))
        if not one_in(draw, 3):
            group = st.sampled_from(["default", "gpu9", ""]) | json_values
            members.append(("group", draw(group)))
        data = draw(json_styles())(Obj(members)).encode()
        if one_in(draw, 8):
            data = BOM + data
        elif one_in(draw, 8):  # not UTF-8: refused, however json.loads(bytes) would guess
            data = data.decode().encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"])))
    elif kind == "value":
        data = json.dumps(draw(json_scalars | st.lists(json_scalars, max_size=2))).encode()
    elif kind == "bytes":
        data = draw(st.binary(min_size=1, max_size=64))
    content_type = draw(st.sampled_from([None, "application/json", "text/plain"]))
    content_type = draw(st.sampled_from([content_type, "application/json; charset=utf-8"]))
    return AdminRequest(path, data, content_type)


async def test_admin_routes_refuse_bad_bodies_cleanly(lab: Lab) -> None:
    backends = await start_lab(lab)
    config = lab.config(per_model=PER_MODEL)
    seen: Counter[str] = Counter()
    async with (
        running_daemon(config) as daemon,
        aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as client,
    ):
        loop = asyncio.get_running_loop()
        switcher = daemon.mux.switchers["default"]

        async def check(request: AdminRequest) -> None:
            headers = {} if request.content_type is None else {"Content-Type": request.content_type}
            expected = admin_oracle(request)
            async with (
                asyncio.timeout(REQUEST_TIMEOUT),
                client.post(
                    daemon.url + request.path, data=request.data, headers=headers
                ) as answer,
            ):
                body = await answer.json()
            if answer.status == 200:
                assert expected == "ok", f"200 {body}; expected {expected}"
                assert body["status"] == "ok"
                if request.path == "/admin/switch":
                    assert switcher.active == body["active_model"]
                elif "model" in body:
                    assert body["model"] not in switcher.awake
                else:
                    assert switcher.active is None
            else:
                assert answer.status < 500, body
                assert set(body) == {"error"}
                assert body["error"]["type"] == "invalid_request_error"
                assert body["error"]["code"] == expected, body
                assert ERROR_STATUS[expected] == answer.status
            seen[expected] += 1
            assert all(switcher.in_flight(m) == 0 and switcher.queued(m) == 0 for m in PER_MODEL)

        @FUZZ
        @given(request=admin_requests())
        @example(request=AdminRequest("/admin/switch", b"", None))
        @example(request=AdminRequest("/admin/sleep", b"", None))
        @example(request=AdminRequest("/admin/switch", b'{"model": "g"}', None))
        @example(request=AdminRequest("/admin/sleep", b'{"group": 1}', None))
        def run(request: AdminRequest) -> None:
            asyncio.run_coroutine_threadsafe(check(request), loop).result(REQUEST_TIMEOUT * 2)

        await asyncio.to_thread(run)
    assert lab.violations() == []
    assert all(backend.raw == [] for backend in backends.values())  # nothing was proxied
    for outcome in ("ok", "invalid_json", "model_required", "model_not_found"):
        assert seen[outcome] > 0, f"never saw {outcome}: {seen}"
