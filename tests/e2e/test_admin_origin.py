"""Web pages of other sites cannot drive the admin API through a browser on the GPU box
(docs/design.md §5 admin rules): a foreign Origin, a cross-site fetch, or, without an admin
token, a Host that names no address of this machine (DNS rebinding) are refused."""

from __future__ import annotations

import socket

import pytest

from tests.support import Lab, running_daemon


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": "evil.example"},  # a rebound name resolving to 127.0.0.1
    ],
    ids=["foreign-origin", "null-origin", "cross-site-fetch", "rebound-host"],
)
async def test_a_request_from_another_site_is_refused(lab: Lab, headers: dict[str, str]) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        url = f"{daemon.url}/admin/switch"
        # text/plain: what a page may send cross-origin without a preflight.
        body = '{"model": "alpha"}'
        headers = {"Content-Type": "text/plain", **headers}
        async with daemon.client.post(url, data=body, headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["error"]["code"] == "unauthorized"
        async with daemon.client.get(f"{daemon.url}/admin/status", headers=headers) as response:
            assert response.status == 401
        assert daemon.mux.switchers["default"].active is None  # nothing was switched
        assert not lab.backends["alpha"].awake


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Host": "localhost"},
        {"Host": socket.gethostname()},
        {"Sec-Fetch-Site": "same-origin"},
    ],
    ids=["cli", "localhost", "own-host-name", "same-site-fetch"],
)
async def test_the_cli_curl_and_the_status_page_are_let_in(
    lab: Lab, headers: dict[str, str]
) -> None:
    await lab.add_backends("alpha")
    async with running_daemon(lab.config()) as daemon:
        async with daemon.client.get(f"{daemon.url}/admin/status", headers=headers) as response:
            assert response.status == 200
        # The page's own requests carry its (this daemon's) origin.
        same_origin = {"Origin": daemon.url, **headers}
        if "Host" in headers:
            port = daemon.url.rsplit(":", 1)[1]
            same_origin["Origin"] = f"http://{headers['Host']}:{port}"
            same_origin["Host"] = f"{headers['Host']}:{port}"
        url = f"{daemon.url}/admin/switch"
        async with daemon.client.post(url, json={"model": "alpha"}, headers=same_origin) as answer:
            assert answer.status == 200, await answer.text()


async def test_with_a_token_any_host_name_may_be_used(lab: Lab) -> None:
    # Behind a reverse proxy the Host is the proxy's public name; the token is the guard.
    await lab.add_backends("alpha")
    config = lab.config(top='admin_token = "t0k"\n')
    async with running_daemon(config) as daemon:
        headers = {"Host": "llm.example.com", "Authorization": "Bearer t0k"}
        async with daemon.client.get(f"{daemon.url}/admin/status", headers=headers) as response:
            assert response.status == 200
        headers["Origin"] = "http://evil.example"
        async with daemon.client.get(f"{daemon.url}/admin/status", headers=headers) as response:
            assert response.status == 401
