"""contrib/litellm and contrib/nginx: routers that put several aiollmux boxes behind one URL."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import yaml
from aiohttp import web

from aiollmux.config import Config
from aiollmux.tools.starter import starter_document
from tests.contrib.conftest import REPO
from tests.support import free_port

LITELLM = REPO / "contrib" / "litellm" / "config.yaml"
NGINX = REPO / "contrib" / "nginx" / "aiollmux.conf"
BOXES = {"192.0.2.10:3000": "box1", "192.0.2.11:3000": "box2"}


def starter_request_timeout() -> float:
    """How long the starter config lets a request wait for its model (a switch)."""
    return float(starter_document()["policy"]["request_timeout_secs"])


def test_litellm_config_has_one_deployment_per_box_and_model() -> None:
    config = yaml.safe_load(LITELLM.read_text())
    deployments = config["model_list"]
    boxes_of: dict[str, set[str]] = {}
    for deployment in deployments:
        params = deployment["litellm_params"]
        assert params["model"].startswith("openai/"), "any OpenAI-compatible server"
        base = urlsplit(params["api_base"])
        assert (base.scheme, base.path) == ("http", "/v1")
        assert base.netloc in BOXES
        assert params["api_key"].startswith("os.environ/")  # no secret in the file
        boxes_of.setdefault(deployment["model_name"], set()).add(base.netloc)
        if deployment.get("model_info", {}).get("mode") != "embedding":
            # Long enough to wait for a model switch on the box.
            assert params["timeout"] >= starter_request_timeout()
            assert params["stream_timeout"] >= starter_request_timeout()
    assert {netloc for netlocs in boxes_of.values() for netloc in netlocs} == set(BOXES)
    assert any(len(netlocs) == 2 for netlocs in boxes_of.values())  # the balanced example
    assert config["litellm_settings"]["request_timeout"] >= starter_request_timeout()
    assert config["general_settings"]["master_key"].startswith("os.environ/")
    # Health checks that complete on every deployment would wake every model; a retried
    # wake_failed would run the failed wake again (issue 11).
    assert config["general_settings"]["background_health_checks"] is False
    assert config["router_settings"]["num_retries"] == 0


def test_nginx_config_streams_and_waits_long_enough() -> None:
    text = NGINX.read_text()
    directives = dict(re.findall(r"(?m)^\s*(proxy_\w+|client_max_body_size)\s+([^;]+);", text))
    assert directives["proxy_buffering"] == "off"  # SSE tokens are not held back
    assert directives["proxy_request_buffering"] == "off"
    assert directives["proxy_http_version"] == "1.1"
    assert int(directives["proxy_read_timeout"].removesuffix("s")) > starter_request_timeout()
    assert int(directives["client_max_body_size"].removesuffix("m")) >= Config().max_request_body_mb
    upstreams = set(re.findall(r"(?m)^upstream (\w+) \{", text))
    routed = set(re.findall(r"(?m)^\s+\S+\s+(aiollmux_\w+);", text))
    routed |= set(re.findall(r"proxy_pass http://(aiollmux_\w+)/;", text))
    assert routed == upstreams == {"aiollmux_box1", "aiollmux_box2"}
    assert set(re.findall(r"server (\S+);", text)) == set(BOXES)


@asynccontextmanager
async def fake_box(name: str, streamed: asyncio.Event) -> AsyncIterator[int]:
    """An aiollmux stand-in that says which box answered; its streams wait for the client."""

    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else {}
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(f"data: {name}\n\n".encode())
            # The second chunk only once the client has the first: a buffering proxy hangs.
            await streamed.wait()
            await response.write(b"data: [DONE]\n\n")
            return response
        return web.json_response({"box": name, "path": request.path, "model": body.get("model")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def test_nginx_routes_by_header_and_by_prefix(tmp_path: Path) -> None:
    nginx = shutil.which("nginx")
    if nginx is None:
        print("check: nginx is not installed; the static checks of the config stand alone")
        assert "proxy_pass http://$aiollmux_upstream;" in NGINX.read_text()
        return
    print("check: nginx -t and routing through a running nginx")
    streamed = asyncio.Event()
    async with fake_box("box1", streamed) as port1, fake_box("box2", streamed) as port2:
        listen = free_port()
        conf = NGINX.read_text().replace("listen 8080;", f"listen 127.0.0.1:{listen};")
        conf = conf.replace("192.0.2.10:3000", f"127.0.0.1:{port1}")
        conf = conf.replace("192.0.2.11:3000", f"127.0.0.1:{port2}")
        (tmp_path / "aiollmux.conf").write_text(conf)
        main = tmp_path / "nginx.conf"
        temp_paths = " ".join(
            f"{kind}_temp_path {tmp_path};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        main.write_text(
            f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
            f"http {{ access_log off; {temp_paths} include {tmp_path}/aiollmux.conf; }}\n"
        )
        command = [nginx, "-p", str(tmp_path), "-c", str(main)]
        check = await asyncio.create_subprocess_exec(
            *command, "-t", stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        output, _ = await check.communicate()
        assert check.returncode == 0, output.decode()
        server = await asyncio.create_subprocess_exec(
            *command, "-g", "daemon off;", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{listen}") as client:
                await _wait_listening(client, server)
                await _check_routes(client, streamed)
        finally:
            server.terminate()
            await server.wait()


async def _wait_listening(
    client: aiohttp.ClientSession, server: asyncio.subprocess.Process
) -> None:
    async with asyncio.timeout(20):
        while True:
            assert server.returncode is None, "nginx exited"
            try:
                async with client.get("/box1/health"):
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)  # nginx is a separate process still starting


async def _check_routes(client: aiohttp.ClientSession, streamed: asyncio.Event) -> None:
    chat = {"model": "gemma-3-12b", "messages": []}
    cases = [
        ("Qwen/Qwen2.5-7B-Instruct", "box1"),
        ("meta-llama/Llama-3.1-8B-Instruct", "box1"),
        ("gemma-3-12b", "box2"),  # the regex entry
    ]
    for header, box in cases:
        headers = {"X-Model": header}
        async with client.post("/v1/chat/completions", json=chat, headers=headers) as response:
            assert response.status == 200
            assert await response.json() == {
                "box": box, "path": "/v1/chat/completions", "model": "gemma-3-12b",
            }  # fmt: skip
    async with client.get("/box2/v1/models") as response:
        assert (await response.json())["box"] == "box2"
        assert (await response.json())["path"] == "/v1/models"
    async with client.post("/v1/chat/completions", json=chat) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "model_required"
    stream = {**chat, "stream": True}
    headers = {"X-Model": "gemma-3-12b"}
    async with client.post("/v1/chat/completions", json=stream, headers=headers) as response:
        first = await response.content.readline()
        assert first == b"data: box2\n"  # arrived while the backend still holds the rest
        streamed.set()
        assert (await response.read()).endswith(b"data: [DONE]\n\n")
