"""Admin and proxied request bodies are JSON read one way (request_body.parse_json): UTF-8,
a byte order mark ignored; UTF-16/32 is 400 `invalid_json` naming RFC 8259 §8.1."""

from __future__ import annotations

import json

import pytest

from tests.support import Lab, running_daemon

BOM = b"\xef\xbb\xbf"
JSON = {"Content-Type": "application/json"}
CHAT = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}]}


async def test_utf8_with_a_byte_order_mark_is_accepted_by_admin_and_proxied_routes(
    lab: Lab,
) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        switch = BOM + b'{"model": "alpha"}'
        url = f"{daemon.url}/admin/switch"
        async with daemon.client.post(url, data=switch, headers=JSON) as response:
            assert response.status == 200, await response.text()
            assert await response.json() == {"status": "ok", "active_model": "alpha"}
        chat = BOM + json.dumps(CHAT).encode()
        url = f"{daemon.url}/v1/chat/completions"
        async with daemon.client.post(url, data=chat, headers=JSON) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["model"] == "alpha"  # the backend answered
        assert lab.backends["alpha"].requests[-1]["body"] == chat  # forwarded as sent
        sleep = BOM + b'{"group": "default"}'
        url = f"{daemon.url}/admin/sleep"
        async with daemon.client.post(url, data=sleep, headers=JSON) as response:
            assert response.status == 200, await response.text()
        assert daemon.mux.switchers["default"].active is None


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32-be"])
@pytest.mark.parametrize(
    ("path", "document"),
    [
        ("/admin/switch", {"model": "alpha"}),
        ("/admin/sleep", {"group": "default"}),
        ("/v1/chat/completions", CHAT),
    ],
    ids=["admin-switch", "admin-sleep", "proxied"],
)
async def test_utf16_and_utf32_bodies_are_invalid_json_naming_the_rule(
    lab: Lab, encoding: str, path: str, document: dict[str, object]
) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        body = json.dumps(document).encode(encoding)
        async with daemon.client.post(daemon.url + path, data=body, headers=JSON) as response:
            assert response.status == 400
            error = (await response.json())["error"]
        assert error["code"] == "invalid_json"
        assert error["type"] == "invalid_request_error"
        assert "UTF-16 or UTF-32" in error["message"]
        assert "must be UTF-8 (RFC 8259 §8.1)" in error["message"]
        assert daemon.mux.switchers["default"].active is None  # nothing was switched
        assert lab.backends["alpha"].requests == []
