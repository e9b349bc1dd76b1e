"""A user's own Spark UIs opened from JupyterLab, and the AWS CLI from her terminal, on a real embedded hub:
real JupyterHub and proxy, real single-user servers with jupyter-server-proxy, the server's own Spark master,
worker and a session's driver, and the session's Ceph RGW.

- alice opens ``<server>/spark-ui/`` through the hub with her token and gets her running session's jobs page
  (the launcher lists it as "Spark UI"); the master's and the worker's UIs and the executors' log links work
  under the proxy prefix too;
- bob's token gets 403, no token a redirect to the login; bob's kernel (another account on the machine)
  reaching the driver's port directly gets 403, with no token or a forged one; the driver listens on loopback;
- ``aws s3 cp`` and ``aws s3 ls`` work in alice's terminal and from her kernel with nothing but the injected
  environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid

import pytest
import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from conftest import needs_root
from esker.hubapi import KernelSession, run_code

pytestmark = [pytest.mark.integration, pytest.mark.ceph, needs_root]

START_SESSION = """
import os
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()   # no configuration cell
sc = spark.sparkContext
assert sc.parallelize(range(100), 2).map(lambda x: x * 2).sum() == 9900
print("UI", json.dumps({"ports": os.environ["ESKER_SPARK_UI_PORTS"], "url": sc.uiWebUrl, "app": sc.applicationId,
                        "conf_dir": os.environ["SPARK_CONF_DIR"], "uid": os.getuid()}))
"""

BOB_DIRECT = """
import base64, hashlib, hmac, json, time, urllib.error, urllib.request
def b64(d): return base64.urlsafe_b64encode(d).decode().rstrip("=")
head, body = b64(b'{"alg":"HS256","typ":"JWT"}'), b64(json.dumps({"exp": int(time.time()) + 60}).encode())
forged = f"{head}.{body}." + b64(hmac.new(b"k" * 32, f"{head}.{body}".encode(), hashlib.sha256).digest())
none = b64(b'{"alg":"none"}') + "." + body + "."
codes = {}
for name, auth in (("none", None), ("forged", forged), ("alg-none", none)):
    for path in ("/", "/jobs/", "/api/v1/applications"):
        req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}")
        if auth:
            req.add_header("Authorization", "Bearer " + auth)
        try:
            codes[f"{name} {path}"] = urllib.request.urlopen(req, timeout=20).status
        except urllib.error.HTTPError as e:
            codes[f"{name} {path}"] = e.code
print("CODES" + json.dumps(codes))
"""


def server_url(h, name: str) -> str:
    return f"{h.url}/user/{name}/"


def listening_addresses(port: int) -> set[str]:
    found = set()
    for name in ("tcp", "tcp6"):
        for line in open(f"/proc/net/{name}").read().splitlines()[1:]:
            f = line.split()
            addr, _, hexport = f[1].partition(":")
            if f[3] == "0A" and int(hexport, 16) == port:
                found.add(addr)
    return found


def test_spark_ui_opens_from_jupyterlab_for_its_owner_only(running_hub, hub):
    alice, bob = "uialice", "uibob"
    for name in (alice, bob):
        hub.ensure_user(name)
    hub.spawn(alice, {"profile": "spark"})
    hub.spawn(bob, {"profile": "minimal"})
    url, token = server_url(running_hub, alice), hub.user_token(alice)
    auth = {"Authorization": f"token {token}"}
    try:
        # The launcher lists the driver's and the master's UIs (jupyter-server-proxy's servers-info API).
        r = requests.get(f"{url}server-proxy/servers-info", headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        entries = {s["name"]: s["launcher_entry"] for s in r.json()["server_processes"]}
        assert entries["spark-ui"]["enabled"] and entries["spark-ui"]["title"] == "Spark UI"
        assert entries["spark-master"]["title"] == "Spark cluster" and not entries["spark-worker"]["enabled"]
        assert entries["spark-ui"]["path_info"] == "spark-ui/"

        # No session yet: the page says so.
        r = requests.get(f"{url}spark-ui/jobs/", headers=auth, timeout=30)
        assert r.status_code == 503 and "No Spark session is running" in r.text, (r.status_code, r.text[:500])

        # The master's UI: its worker, linked under the proxy prefix. The spawn returns once the worker is started,
        # not registered (a session waits for it anyway): on a busy machine that takes a few seconds more.
        deadline = time.monotonic() + 60
        while True:
            r = requests.get(f"{url}spark-master/", headers=auth, timeout=30)
            assert r.status_code == 200 and "Spark Master at spark://127.0.0.1:" in r.text, r.text[:500]
            if f'href="/user/{alice}/spark-worker/"' in r.text or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert f'href="/user/{alice}/spark-worker/"' in r.text, r.text

        with KernelSession(url, token) as k:
            out = k.run("import json\n" + START_SESSION, timeout=300)
            assert out["error"] is None, out["error"] + out["stderr"][-2000:]
            info = json.loads(out["stdout"].split("UI", 1)[1].strip().splitlines()[0])
            ports = dict(p.split(":") for p in info["ports"].split(","))
            driver = int(ports["driver"])
            assert info["url"].endswith(f":{driver}") and driver != 4040, info  # the port the spawn picked
            # Only on loopback (Spark's UI would bind every address without SPARK_LOCAL_IP).
            assert listening_addresses(driver) <= {"0100007F", "0000000000000000FFFF00000100007F"}, \
                listening_addresses(driver)

            # alice, through the hub and her server, gets her session's jobs page: / redirects to jobs/.
            r = requests.get(f"{url}spark-ui/", headers=auth, timeout=60)
            assert r.status_code == 200, (r.status_code, [(h.status_code, h.headers.get("Location"))
                                                          for h in r.history], r.url)
            assert r.url == f"{url}spark-ui/jobs/", [h.headers.get("Location") for h in r.history]
            assert "Spark Jobs" in r.text and f"esker-{alice}" in r.text
            assert f'href="/user/{alice}/spark-ui/stages/"' in r.text  # links under the proxy prefix
            apps = requests.get(f"{url}spark-ui/api/v1/applications", headers=auth, timeout=30).json()
            assert [a["id"] for a in apps] == [info["app"]]
            # The executors' logs, as the driver's Executors page links them: the worker's UI, proxied too.
            execs = requests.get(f"{url}spark-ui/api/v1/applications/{info['app']}/executors", headers=auth,
                                 timeout=30).json()
            logs = [e["executorLogs"]["stdout"] for e in execs if e["id"] != "driver"]
            assert logs and logs[0].startswith(f"/user/{alice}/spark-worker/logPage/"), execs
            r = requests.get(f"{running_hub.url}{logs[0]}", headers=auth, timeout=30)
            assert r.status_code == 200 and "stdout log page" in r.text, r.text[:500]
            # The master lists the running application, with a link to its UI through the proxy.
            r = requests.get(f"{url}spark-master/", headers=auth, timeout=30)
            assert info["app"] in r.text and f'href="/user/{alice}/spark-ui/"' in r.text

            # bob's token: refused by alice's server; no token: sent to log in.
            r = requests.get(f"{url}spark-ui/jobs/", headers={"Authorization": f"token {hub.user_token(bob)}"},
                             timeout=30, allow_redirects=False)
            assert r.status_code == 403, r.status_code
            r = requests.get(f"{url}spark-ui/jobs/", timeout=30, allow_redirects=False)
            assert r.status_code == 302 and ("/hub/login" in r.headers["Location"] or
                                             "/oauth" in r.headers["Location"]), (r.status_code, r.headers)

            # bob's kernel, another account on the machine, goes to the driver's port itself: 403 every time.
            out = run_code(server_url(running_hub, bob), hub.user_token(bob), f"PORT = {driver}\n" + BOB_DIRECT)
            assert out["error"] is None, out["error"]
            codes = json.loads(out["stdout"].split("CODES", 1)[1])
            assert set(codes.values()) == {403}, codes
            # ... and so does a request without the token from here.
            assert requests.get(f"http://127.0.0.1:{driver}/jobs/", timeout=30).status_code == 403

            # The token is never on a command line; the key only in alice's 0600 file.
            conf = os.path.join(info["conf_dir"], "spark-defaults.conf")
            st = os.stat(conf)
            assert (st.st_mode & 0o777, st.st_uid) == (0o600, info["uid"])
            key = next(line.split(" ", 1)[1].strip() for line in open(conf)
                       if line.startswith("spark.org.apache.spark.ui.JWSFilter.param.secretKey "))
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    args = open(f"/proc/{pid}/cmdline", "rb").read()
                except OSError:
                    continue
                assert key.encode() not in args and b"Bearer" not in args, pid
            k.run("spark.stop()")
    finally:
        hub.stop(alice)
        hub.stop(bob)


async def _terminal(server: str, token: str, command: str, timeout: float = 120) -> str:
    """Run ``command`` in a new JupyterLab terminal of the server (terminado's websocket); its output."""
    headers = {"Authorization": f"token {token}"}
    r = await asyncio.to_thread(requests.post, f"{server}api/terminals", headers=headers, timeout=30)
    r.raise_for_status()
    name = r.json()["name"]
    marker = uuid.uuid4().hex
    try:
        ws = await websocket_connect(HTTPRequest(server.replace("http", "ws", 1) + f"terminals/websocket/{name}",
                                                 headers=headers, connect_timeout=60, request_timeout=60))
        # The marker is split in the command line the terminal echoes, whole only in what echo prints.
        ws.write_message(json.dumps(["stdin", f'{command}; echo "E""ND-{marker}-$?"\r']))
        out, deadline = "", time.monotonic() + timeout
        while not re.search(f"END-{marker}-\\d+", out):
            raw = await asyncio.wait_for(ws.read_message(), deadline - time.monotonic())
            if raw is None:
                break
            msg = json.loads(raw)
            if msg[0] == "stdout":
                out += msg[1]
        ws.close()
        return out
    finally:
        await asyncio.to_thread(requests.delete, f"{server}api/terminals/{name}", headers=headers, timeout=30)


def test_aws_cli_in_a_users_terminal_and_kernel(running_hub, hub):
    name = "clialice"
    hub.ensure_user(name)
    hub.spawn(name, {"profile": "spark"})
    url, token = server_url(running_hub, name), hub.user_token(name)
    try:
        # A real terminal, as the user opens one in JupyterLab: the environment's aws, the injected keys.
        out = asyncio.run(_terminal(url, token, 'echo hello from the terminal > "$SCRATCH_DIR/t.txt" && '
                                    'command -v aws && aws s3 cp "$SCRATCH_DIR/t.txt" "s3://$ESKER_BUCKET/cli/t.txt" '
                                    '&& aws s3 ls "s3://$ESKER_BUCKET/cli/"'))
        assert re.search(r"\n[^\n]*/spark-[0-9a-f]{12}/bin/aws\r?\n", out), out  # the profile's own aws
        assert "upload:" in out and " t.txt" in out, out
        assert re.search(r"END-[0-9a-f]+-0\b", out), out

        # From the kernel too (subprocess), reading back what the terminal wrote.
        code = """
import os, subprocess
def aws(*a):
    p = subprocess.run(["aws", *a], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (a, p.stdout, p.stderr)
    return p.stdout
print("LS", aws("s3", "ls", "s3://" + os.environ["ESKER_BUCKET"] + "/cli/"))
print("CAT", aws("s3", "cp", "s3://" + os.environ["ESKER_BUCKET"] + "/cli/t.txt", "-"))
print("BUCKET=" + os.environ["ESKER_BUCKET"])
print("BUCKETS", aws("s3", "ls"))
print("VARS", sorted(k for k in os.environ if k.startswith("AWS_")))
print("FILES", [p for p in ("~/.aws/config", "~/.aws/credentials") if os.path.exists(os.path.expanduser(p))])
"""
        out = run_code(url, token, code)
        assert out["error"] is None, out["error"]
        assert "t.txt" in out["stdout"].split("LS", 1)[1] and "CAT hello from the terminal" in out["stdout"]
        bucket = out["stdout"].split("BUCKET=", 1)[1].split()[0]
        assert bucket in out["stdout"].split("BUCKETS", 1)[1].split("VARS", 1)[0], out["stdout"]
        assert "FILES []" in out["stdout"]  # nothing but the environment
    finally:
        hub.stop(name)
