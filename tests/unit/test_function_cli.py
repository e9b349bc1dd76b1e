"""`esker fn`: every subcommand's --help, and publish/list/show/alias/delete/share/invoke against a real
loopback HTTP server standing in for the esker-functions service routes, with the bucket in a directory."""

import hashlib
import io
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "images" / "esker-client" / "src"
try:
    import esker_client  # noqa: F401
except ImportError:
    sys.path.insert(0, str(SRC))

from esker_client.functions.cli import main  # noqa: E402
from esker_client.functions.store import FunctionStore  # noqa: E402

TOKEN = "s3cr3t-token-value"
ACTIONS = ["publish", "list", "show", "invoke", "alias", "share", "logs", "delete"]


def _etag(p):
    return '"%s"' % hashlib.md5(p.read_bytes()).hexdigest()


class DirS3:
    """The part of boto3's S3 client FunctionStore uses, over a directory (the Ceph tier tests the real one).
    If-Match takes the quoted ETag only (RFC 7232), where Ceph RGW takes the bare one: both forms are tested."""

    class exceptions:
        class NoSuchKey(Exception):
            pass

    def __init__(self, root):
        self.root = Path(root)

    def _p(self, bucket, key):
        return self.root / bucket / key

    def put_object(self, Bucket, Key, Body, IfMatch=None, IfNoneMatch=None, **kw):
        p = self._p(Bucket, Key)
        if (IfNoneMatch == "*" and p.exists()) or (IfMatch and (not p.exists() or _etag(p) != IfMatch)):
            raise ClientError({"Error": {"Code": "PreconditionFailed"}}, "PutObject")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(Body)

    def head_object(self, Bucket, Key):
        p = self._p(Bucket, Key)
        if not p.is_file():
            raise self.exceptions.NoSuchKey(Key)
        return {"ETag": _etag(p)}

    def get_object(self, Bucket, Key):
        p = self._p(Bucket, Key)
        if not p.is_file():
            raise self.exceptions.NoSuchKey(Key)
        return {"Body": io.BytesIO(p.read_bytes()), "ETag": _etag(p)}

    def delete_objects(self, Bucket, Delete):
        for o in Delete["Objects"]:
            self._p(Bucket, o["Key"]).unlink(missing_ok=True)

    def get_paginator(self, _):
        s3 = self

        class P:
            def paginate(self, Bucket, Prefix, Delimiter=None):
                base = s3.root / Bucket
                keys = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()) if base.exists() else []
                keys = [k for k in keys if k.startswith(Prefix)]
                if not Delimiter:
                    return [{"Contents": [{"Key": k} for k in keys]}]
                pre = sorted({Prefix + k[len(Prefix):].split(Delimiter)[0] + Delimiter for k in keys
                              if Delimiter in k[len(Prefix):]})
                return [{"CommonPrefixes": [{"Prefix": p} for p in pre]}]
        return P()


class Service:
    """A loopback HTTP server recording every request; answers are set per (method, path)."""

    def __init__(self):
        self.requests, self.answers = [], {}
        svc = self

        class H(BaseHTTPRequestHandler):
            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                svc.requests.append({"method": self.command, "path": self.path, "body": body,
                                     "auth": self.headers.get("Authorization")})
                status, ans = svc.answers.get((self.command, self.path), (200, {}))
                raw = json.dumps(ans).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = _any

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def svc():
    s = Service()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def env(svc, tmp_path):
    return {"JUPYTERHUB_API_URL": svc.url + "/hub/api", "JUPYTERHUB_API_TOKEN": TOKEN, "JUPYTERHUB_USER": "alice",
            "ESKER_PROFILE": "minimal", "HOME": str(tmp_path / "home")}


@pytest.fixture
def store(tmp_path):
    return FunctionStore(DirS3(tmp_path / "s3"), "alice-bucket")


def fn(args, env, store, capsys):
    rc = main(["fn"] + args, env=env, store=store)
    o = capsys.readouterr()
    assert TOKEN not in o.out + o.err
    return rc, o.out, o.err


MODULE = "from esker_client import function\n\n@function(timeout=9)\ndef predict(x: float, k: int = 2) -> float:\n" \
         "    return x * k\n"


@pytest.mark.parametrize("action", ACTIONS)
def test_help_of_every_subcommand(action):
    r = subprocess.run([sys.executable, "-m", "esker_client.cli", "fn", action, "--help"], capture_output=True,
                       text=True, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert f"esker fn {action}" in r.stdout and len(r.stdout.splitlines()) > 4


def test_top_help_points_to_hub_esker():
    r = subprocess.run([sys.executable, "-m", "esker_client.cli", "--help"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and "fn" in r.stdout and "hub's own" in r.stdout


def test_publish_request_format_and_versions(tmp_path, svc, env, store, capsys):
    mod = tmp_path / "m.py"
    mod.write_text(MODULE)
    rc, out, err = fn(["publish", str(mod), "--version", "1.0.0", "--option", "cpu=2"], env, store, capsys)
    assert rc == 0, err
    (req,) = svc.requests
    assert req["method"] == "POST" and req["path"] == "/services/esker-functions/api/functions/predict"
    assert req["auth"] == f"token {TOKEN}"
    m = req["body"]
    assert m["name"] == "predict" and m["entry"] == "predict" and m["profile"] == "minimal"
    assert m["options"] == {"cpu": "2"} and m["semver"] == "1.0.0" and m["timeout"] == 9
    assert m["source"] == "module" and m["origin"] == str(mod.resolve()) and len(m["vid"]) == 16
    assert m["schema"]["input"]["properties"] == {"x": {"type": "number"}, "k": {"type": "integer"}}
    assert m["schema"]["input"]["required"] == ["x"] and m["schema"]["output"] == {"type": "number"}
    assert store.get_code("predict", m["vid"]) == MODULE and store.get_manifest("predict", m["vid"]) == m
    assert store.get_aliases("predict") == {"latest": m["vid"], "1.0.0": m["vid"], "1.0": m["vid"], "1": m["vid"]}
    url = f"{svc.url}/services/esker-functions/call/alice/predict"
    assert url in out and "curl" in out and m["vid"] in out and "$JUPYTERHUB_API_TOKEN" in out

    # the same code again: the same version; other code under the same pin: refused, nothing changes
    rc, out, _ = fn(["publish", str(mod), "--option", "cpu=2"], env, store, capsys)
    assert rc == 0 and "unchanged" in out and svc.requests[-1]["body"]["vid"] == m["vid"]
    mod.write_text(MODULE.replace("x * k", "x * k + 1"))
    n = len(svc.requests)
    rc, _, err = fn(["publish", str(mod), "--version", "1.0.0", "--option", "cpu=2"], env, store, capsys)
    assert rc == 1 and "1.0.0" in err and "pinned" in err and len(svc.requests) == n
    rc, out, _ = fn(["publish", str(mod), "--version", "1.1.0", "--option", "cpu=2"], env, store, capsys)
    v2 = svc.requests[-1]["body"]["vid"]
    assert rc == 0 and v2 != m["vid"]
    al = store.get_aliases("predict")
    assert al["latest"] == al["1"] == al["1.1"] == v2 and al["1.0.0"] == m["vid"]

    # show / list
    rc, out, _ = fn(["show", "predict", "--json"], env, store, capsys)
    shown = json.loads(out)
    assert [v["vid"] for v in shown["versions"]] == [v2, m["vid"]]
    svc.answers[("GET", "/services/esker-functions/api/functions")] = (200, {"functions": [
        {"name": "predict", "owner": "alice", "state": "running", "url": url},
        {"name": "score", "owner": "bob", "url": "u2"}]})
    rc, out, _ = fn(["list", "--json"], env, store, capsys)
    listed = json.loads(out)
    assert listed["functions"][0]["name"] == "predict" and listed["functions"][0]["state"] == "running"
    assert [f["owner"] for f in listed["shared_with_me"]] == ["bob"]
    rc, out, _ = fn(["list"], env, store, capsys)
    assert "predict" in out and "bob/score" in out

    # rollback, then deleting an aliased version is refused naming the aliases; an unaliased one goes
    rc, out, _ = fn(["alias", "predict", "latest", "1.0.0"], env, store, capsys)
    assert rc == 0 and store.get_aliases("predict")["latest"] == m["vid"]
    rc, _, err = fn(["alias", "predict", "1.0.0", v2], env, store, capsys)
    assert rc == 1 and "pinned" in err
    rc, _, err = fn(["delete", "predict", "--version", m["vid"][:8]], env, store, capsys)
    assert rc == 1 and "1.0.0" in err and "latest" in err
    assert store.get_manifest("predict", m["vid"]) is not None
    rc, _, err = fn(["delete", "predict", "--version", "nope"], env, store, capsys)
    assert rc == 1 and "no version" in err

    rc, out, _ = fn(["delete", "predict"], env, store, capsys)
    assert rc == 0 and svc.requests[-1]["method"] == "DELETE"
    assert svc.requests[-1]["path"] == "/services/esker-functions/api/functions/predict"
    assert store.list_functions() == [] and store.get_aliases("predict") == {}


def test_service_refusal_is_printed_and_aliases_kept(tmp_path, svc, env, store, capsys):
    mod = tmp_path / "m.py"
    mod.write_text(MODULE)
    svc.answers[("POST", "/services/esker-functions/api/functions/predict")] = (
        403, {"error": {"type": "Forbidden", "message": "you may not use profile 'gpu'"}})
    rc, out, err = fn(["publish", str(mod), "--profile", "gpu"], env, store, capsys)
    assert rc == 1 and "you may not use profile 'gpu'" in err and "403" in err
    assert store.get_aliases("predict") == {}


def test_bad_input_names_the_field(tmp_path, svc, env, store, capsys):
    mod = tmp_path / "m.py"
    mod.write_text(MODULE)
    for args, word in ((["publish", str(mod), "--option", "cpu"], "--option"),
                       (["publish", str(mod), "--version", "1.2"], "semver"),
                       (["publish", str(mod), "--name", "Bad_Name"], "lowercase"),
                       (["publish", str(mod), "--concurrency", "0"], "--concurrency"),
                       (["invoke", "predict", "-d", "[1]"], "JSON object"),
                       (["invoke", "predict", "-d", "{x"], "not JSON"),
                       (["logs", "predict"], "no log")):
        rc, _, err = fn(args, env, store, capsys)
        assert rc == 1 and word in err, (args, err)
    assert svc.requests == []
    rc, _, err = fn(["publish", str(mod)], {k: v for k, v in env.items() if k != "ESKER_PROFILE"}, store, capsys)
    assert rc == 1 and "--profile" in err


def test_invoke_share_logs(tmp_path, svc, env, store, capsys):
    base = "/services/esker-functions/"
    svc.answers[("POST", base + "call/bob/score/v/1.0")] = (200, {"y": 3})
    rc, out, _ = fn(["invoke", "bob/score", "-d", '{"x": 1}', "--version", "1.0"], env, store, capsys)
    assert rc == 0 and json.loads(out) == {"y": 3}
    assert svc.requests[-1]["body"] == {"x": 1}
    (tmp_path / "b.json").write_text('{"x": 2}')
    svc.answers[("POST", base + "call/alice/predict/async")] = (202, {"task": "t1", "status": "queued"})
    svc.answers[("GET", base + "call/alice/predict/tasks/t1")] = (200, {"status": "done", "result": 4})
    rc, out, _ = fn(["invoke", "predict", "-d", f"@{tmp_path / 'b.json'}", "--async"], env, store, capsys)
    assert rc == 0 and json.loads(out) == 4
    svc.answers[("POST", base + "call/alice/predict/")] = (500, {"error": {"type": "ZeroDivisionError",
                                                                           "message": "division by zero"}})
    rc, _, err = fn(["invoke", "predict"], env, store, capsys)
    assert rc == 1 and "ZeroDivisionError: division by zero" in err

    rc, out, _ = fn(["share", "predict", "--user", "bob"], env, store, capsys)
    assert rc == 0 and svc.requests[-1] == {"method": "POST", "path": base + "api/functions/predict/shares",
                                            "body": {"user": "bob"}, "auth": f"token {TOKEN}"}
    fn(["share", "predict", "--group", "lab", "--revoke"], env, store, capsys)
    assert svc.requests[-1]["method"] == "DELETE" and svc.requests[-1]["body"] == {"group": "lab"}
    fn(["share", "predict", "--code", "--expires", "3600"], env, store, capsys)
    assert svc.requests[-1]["path"] == base + "api/functions/predict/share-codes"
    assert svc.requests[-1]["body"] == {"expires_in": 3600}

    log = Path(env["HOME"]) / ".esker" / "functions" / "predict.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    rc, out, _ = fn(["logs", "predict", "-n", "3"], env, store, capsys)
    assert rc == 0 and out == "line 97\nline 98\nline 99\n"


def test_token_file_and_hub_url_override(tmp_path, svc, store, capsys):
    tf = tmp_path / "tok"
    tf.write_text(TOKEN + "\n")
    env = {"JUPYTERHUB_USER": "alice", "HOME": str(tmp_path)}
    rc, out, _ = fn(["share", "predict", "--user", "bob", "--hub-url", svc.url, "--token-file", str(tf)],
                    env, store, capsys)
    assert rc == 0 and svc.requests[-1]["auth"] == f"token {TOKEN}"
    rc, _, err = fn(["share", "predict", "--user", "bob", "--hub-url", svc.url], env, store, capsys)
    assert rc == 1 and "ESKER_TOKEN" in err


def test_environment_launcher_runs_esker_fn(tmp_path):
    from esker.system.envs import Environment, write_esker_launcher

    env = Environment(name="t", path=tmp_path / "env")
    (tmp_path / "env" / "bin").mkdir(parents=True)
    (tmp_path / "env" / "bin" / "python").symlink_to(sys.executable)
    launcher = write_esker_launcher(env)
    assert launcher.stat().st_mode & 0o777 == 0o755
    r = subprocess.run([str(launcher), "fn", "publish", "--help"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and "--entry" in r.stdout and "--option" in r.stdout, r.stderr


def test_hub_esker_has_fn():
    from esker.cli import build_parser

    r = subprocess.run([sys.executable, "-c", "import sys; from esker.cli import main; sys.exit(main(sys.argv[1:]))",
                        "fn", "share", "--help"], capture_output=True, text=True,
                       env={"PYTHONPATH": f"{ROOT}:{SRC}", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and "--group" in r.stdout, r.stderr
    assert build_parser() is not None


def test_esker_client_imports_nothing_of_the_hub():
    import ast

    for p in (SRC / "esker_client").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not [n for n in names if n == "esker" or n.startswith("esker.")], p


def test_redirect_is_refused_without_following(svc, env, store, capsys):
    base = "/services/esker-functions/"
    other = Service()  # where a redirect would send the token
    try:
        svc.answers[("POST", base + "api/functions/predict/shares")] = (302, {})
        orig = svc.httpd.RequestHandlerClass.send_response

        def send_response(self, code, message=None):
            orig(self, code, message)
            if code == 302:
                self.send_header("Location", other.url + "/steal")
        svc.httpd.RequestHandlerClass.send_response = send_response
        rc, _, err = fn(["share", "predict", "--user", "bob"], env, store, capsys)
        assert rc == 1 and "redirected" in err and other.requests == []
    finally:
        other.httpd.shutdown()
        other.httpd.server_close()


def test_schema_of_plain_hints_only():
    from esker_client.functions.cli import schema_of

    s = schema_of("import numpy as np\ndef f(a: np.ndarray, b: list[int], *, c: str = 'x', **kw) -> None: pass\n", "f")
    assert s["input"]["properties"] == {"a": {}, "b": {"type": "array"}, "c": {"type": "string"}}
    assert s["input"]["required"] == ["a", "b"] and s["input"]["additionalProperties"] is True
    assert s["output"] == {"type": "null"}


def test_store_refuses_bad_names_and_vids(store):
    with pytest.raises(ValueError, match="lowercase"):
        store.get_aliases("../bob")
    with pytest.raises(ValueError, match="version id"):
        store.get_code("predict", "../../x")


def test_alias_updates_retry_when_another_writer_got_in_between(store):
    other = FunctionStore(store.s3, store.bucket)  # a second publish, in another terminal
    rounds = []

    def latest_to_b(al):
        rounds.append(dict(al))
        if len(rounds) == 1:  # between our read and our write, the other one moves 1.0
            other.update_aliases("predict", lambda a: {**a, "1.0": "a" * 16})
        return {**al, "latest": "b" * 16}

    before, after = store.update_aliases("predict", latest_to_b)
    # the first write was refused, re-read, re-done (a third round: the first bare If-Match, refused here)
    assert rounds[0] == {} and rounds[1:] == [{"1.0": "a" * 16}] * 2
    assert store.get_aliases("predict") == after == {"1.0": "a" * 16, "latest": "b" * 16}

    def always_raced(al):  # someone writing without end: a clear error, not a lost update
        rounds.append(al)
        other.update_aliases("predict", lambda a: {**a, "n": str(len(rounds))})
        return al

    from esker_client.functions.store import AliasConflict
    with pytest.raises(AliasConflict, match="changed 8 times"):
        store.update_aliases("predict", always_raced)


def test_a_refused_publish_takes_back_its_own_aliases_only(tmp_path, svc, env, store, capsys):
    mod = tmp_path / "m.py"
    mod.write_text(MODULE)
    svc.answers[("POST", "/services/esker-functions/api/functions/predict")] = (
        403, {"error": {"type": "Forbidden", "message": "no"}})
    real = store.update_aliases
    calls = []

    def update(name, change):  # after our aliases land, a concurrent publish pins 2.0.0 to its version
        out = real(name, change)
        if not calls:
            real(name, lambda al: {**al, "2.0.0": "c" * 16})
        calls.append(out)
        return out

    store.update_aliases = update
    rc, out, err = fn(["publish", str(mod), "--profile", "gpu", "--version", "1.0.0"], env, store, capsys)
    assert rc == 1 and len(calls) == 2
    assert store.get_aliases("predict") == {"2.0.0": "c" * 16}  # ours (latest, 1.0.0, 1.0, 1) gone, theirs kept
