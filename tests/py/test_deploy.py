"""The README's nginx configuration, run by a real nginx in front of abs-socket and the stand-in
audiobookshelf, with real clients through it on both socket paths (issue 7)."""

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from conftest import REPO, Client, Server, fixture_copy, free_port, token, user
from services import _wait_port
from test_bridge import Upstream, wait_upstream


def readme_nginx_config():
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- nginx-config -->\s*```nginx\n(.*?)```", text, re.S)
    assert block, "README.md has no nginx configuration block"
    return block.group(1)


@pytest.fixture(scope="module")
def deployment():
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    d = Path(tempfile.mkdtemp(prefix="abs-socket-nginx-"))
    d.chmod(0o777)
    up = Upstream()
    srv = Server(fixture_copy(d), args=["--upstream", up.url, "--trust-proxy"])
    port = free_port()
    site = readme_nginx_config()
    assert "listen 80;" in site and "127.0.0.1:3333" in site and "127.0.0.1:13378" in site
    site = (site.replace("listen 80;", f"listen 127.0.0.1:{port};")
                .replace("127.0.0.1:3333", f"127.0.0.1:{srv.port}")
                .replace("127.0.0.1:13378", f"127.0.0.1:{up.port}"))
    temp = "".join(f"{k}_temp_path {d}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (d / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    {temp}
{site}
}}
""")
    proc = subprocess.Popen([nginx, "-p", str(d), "-c", str(d / "nginx.conf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc, "nginx")
        yield {"url": f"http://127.0.0.1:{port}", "srv": srv, "up": up, "dir": d}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        srv.stop()
        up.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("path,transports", [
    ("socket.io", ["websocket"]),
    ("audiobookshelf/socket.io", ["websocket"]),
    ("audiobookshelf/socket.io", None),  # polling first, then the websocket upgrade
])
def test_a_client_through_nginx_is_served_by_abs_socket_and_bridged(deployment, path, transports):
    c = Client(deployment["url"], path=path, transports=transports)
    try:
        # The API key proves abs-socket answered: audiobookshelf's socket would refuse it.
        init = c.auth(token("apikey_admin_active"))
        assert init["userId"] == user("admin")["id"] and "usersOnline" in init
        wait_upstream(deployment["up"], {user("admin")["id"]: 1})
        deployment["up"].emit("admins", "task_progress", {"via": path})
        assert c.next("task_progress") == {"via": path}
        if transports is None:
            time.sleep(0.5)
            assert c.sio.transport() == "websocket", "the upgrade headers reached abs-socket"
    finally:
        c.close()


def test_everything_else_goes_to_audiobookshelf(deployment):
    for p in ("/", "/api/libraries", "/audiobookshelf/api/me", "/login"):
        res = requests.get(deployment["url"] + p, timeout=5)
        assert res.status_code == 200 and res.text == f"upstream {p}", (p, res.text)
