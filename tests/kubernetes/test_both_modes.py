"""The same profile and choices give the same environment in both modes, for every profile and choice,
Spark, object storage and courses included.

The embedded side is what EskerLocalSpawner.esker_prepare builds (embedded_placement + build_plan with the
services' grants); the Kubernetes side is the pod EskerKubeSpawner renders with KubeSpawner's own builder,
offline, from the same grants. Only the facts of placement may differ (where scratch and the home are
mounted, how the Spark driver is reached), and each must be what that mode's placement says.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import shlex

import pytest
import yaml

from esker import resources
from esker.cli import preview as cli_preview
from esker.core import config
from esker.core.catalog import Catalog, UserInfo
from esker.core.plan import build_plan, select, with_grants
from esker.courses.content import course_grant
from esker.courses.model import courses_from_config
from esker.spawner.embedded import account_name, embedded_placement, embedded_site

HUB_OWNED = re.compile(r"^(JUPYTERHUB_|JPY_|JUPYTER_IMAGE|CPU_|MEM_)")
# Variables that name a place; checked against each mode's placement instead of against each other.
PLACED = {"SCRATCH_DIR", "TMPDIR", "ESKER_COURSE_DIR", "SPARK_MASTER", "PYSPARK_SUBMIT_ARGS", "SPARK_CONF_DIR",
          "PYSPARK_PYTHON"}  # the environment's python on one machine, the image's on Kubernetes
# Spark settings that say how this mode reaches its cluster (all else must agree). The driver's web UI is on in
# both modes with a server's own cluster (behind its UI filter, on loopback, at the grant's port).
# The executors' class archive is the embedded environment's (esker.spark.archive): the images build none.
SPARK_PLACED = re.compile(r"^spark\.(driver\.(host|bindAddress|port|blockManager\.port)|local\.dir|kubernetes\..*"
                          r"|master|pyspark\.python|executor\.defaultJavaOptions|executorEnv\.SPARK_CONF_DIR)$")
STORAGE = {"endpoint": "http://rgw.example:80", "access_key": "AKALICE", "secret_key": "s3cr3t/+x",
           "bucket": "esker-alice", "region": "us-east-1", "datasets": "weather=s3://esker-data/weather/"}
STATE_DIR = "/var/lib/esker"
# A server's own Spark cluster (each mode starts one per Spark server: the embedded backend as processes of the
# user's, the Kubernetes one as the pod's sidecars): where its master is differs, its keys reach Spark alike.
SPARK = {"master": "spark://127.0.0.1:7077", "secret": "rpc-S3cret_alice", "ui_key": "uiKey-alice_0123456789",
         "ui_port": "4040", "master_ui_port": "8080", "worker_ui_port": "8081"}


@pytest.fixture(scope="module", autouse=True)
def kubeconfig():
    with cli_preview.offline_kubeconfig():
        yield


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    data = yaml.safe_load(resources.SHIPPED_CONFIG.read_text())
    data["storage"].update(enabled=True, endpoint="http://rgw.example:80")
    data.setdefault("courses", []).append(
        {"name": "intro-ml", "display_name": "Intro to ML", "group": "intro-ml",
         "instructors": ["alice"], "participants": ["bob"]})
    path = tmp_path_factory.mktemp("modes") / "esker.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def combinations(catalog):
    for p in catalog.profiles:
        names = [o.name for o in p.options]
        for picks in itertools.product(*[[c.name for c in o.choices] for o in p.options]):
            yield {"profile": p.slug, **dict(zip(names, picks))}


def spark_conf(args: str) -> dict[str, str]:
    words = shlex.split(args)
    conf = {}
    for i, w in enumerate(words):
        if w == "--conf":
            k, _, v = words[i + 1].partition("=")
            conf[k] = v
        elif w == "--master":
            conf["spark.master"] = words[i + 1]
    return conf


def embedded_env(cfg, sel, grants):
    account = account_name(cfg, sel.user.name)
    home = f"{cfg['users']['home_root']}/{account}"
    placement = embedded_placement(sel, cfg, STATE_DIR, account=account, home=home,
                                   python=f"{STATE_DIR}/envs/{sel.environment}-0123456789ab/bin/python")
    plan = build_plan(sel, with_grants(placement, **grants), embedded_site(cfg.data))
    return placement, dict(plan.env), dict(plan.files)


def kubernetes_env(config_file, user, groups, opts, grants):
    async def run():
        sp = cli_preview.make_spawner(user, groups, False, config_file, opts)
        sp._esker_grants = grants  # what esker_prepare sets from the same services' grants
        pod, *others = await sp.esker_manifests()
        secrets = {o["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in o["data"].items()}
                   for o in others if o["kind"] == "Secret"}
        return sp, resolve(pod["spec"]["containers"][0]["env"], secrets), pod | {"secrets": secrets}

    return asyncio.run(run())


def resolve(env, secrets):
    """A container's env as the kubelet gives it: a secretKeyRef reads the Secret the spawner creates."""
    out = {}
    for e in env:
        if "value" in e:
            out[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            out[e["name"]] = secrets[ref["name"]][ref["key"]]
    return out



@pytest.mark.parametrize("user,groups", [("alice", ("gpu-users",)), ("bob", ("intro-ml",))])
def test_every_profile_and_choice_gives_the_same_environment_in_both_modes(config_file, user, groups):
    cfg = config.load(config_file)
    catalog = Catalog.from_config(cfg)
    who = UserInfo(user, frozenset(groups))
    grants = {"storage": STORAGE, "courses": course_grant(courses_from_config(cfg), who), "spark": SPARK}
    assert grants["courses"]["names"] == "intro-ml"  # the course variables are part of what is compared
    seen = 0
    for opts in combinations(catalog):
        try:
            sel = select(catalog, who, opts)
        except Exception:  # a profile this user's groups do not offer: refused alike (tests/kubernetes/test_spawner.py)
            continue
        placement, emb, emb_files = embedded_env(cfg, sel, grants)
        sp, pod, manifest = kubernetes_env(config_file, user, groups, opts, grants)
        k8s = {k: v for k, v in pod.items() if not HUB_OWNED.match(k)}
        assert set(emb) == set(k8s), opts
        assert {k: v for k, v in emb.items() if k not in PLACED} == \
               {k: v for k, v in k8s.items() if k not in PLACED}, opts
        # The placed ones are what each mode's placement says.
        for env, scratch, home in ((emb, placement.scratch_dir, placement.home),
                                   (k8s, sp.esker_launch_plan.scratch_dir, sp.course_home)):
            assert env["SCRATCH_DIR"] == scratch and env["TMPDIR"] == f"{scratch}/tmp"
            assert env["ESKER_COURSE_DIR"] == f"{home}/intro-ml"
        assert emb.get("ESKER_COURSE_ROLE") == k8s.get("ESKER_COURSE_ROLE") == \
            ("instructor" if user == "alice" else None)
        assert emb["AWS_SECRET_ACCESS_KEY"] == k8s["AWS_SECRET_ACCESS_KEY"] == STORAGE["secret_key"]
        # ... but on Kubernetes from the server's Secret: no key in the pod spec's plain values.
        plain = yaml.safe_dump({k: v for k, v in manifest.items() if k != "secrets"})
        assert STORAGE["secret_key"] not in plain and STORAGE["access_key"] not in plain, opts
        assert SPARK["secret"] not in plain and SPARK["ui_key"] not in plain, opts
        if sel.profile.spark:
            e, k = spark_conf(emb["PYSPARK_SUBMIT_ARGS"]), spark_conf(k8s["PYSPARK_SUBMIT_ARGS"])
            assert e["spark.master"] == emb["SPARK_MASTER"] and k["spark.master"] == k8s["SPARK_MASTER"]
            assert e["spark.local.dir"].startswith(placement.scratch_dir)
            assert emb["PYSPARK_PYTHON"] == e["spark.pyspark.python"] == placement.python
            assert k8s["PYSPARK_PYTHON"] == k["spark.pyspark.python"]
            env_dir = placement.python.rsplit("/bin/", 1)[0]
            assert e["spark.executor.defaultJavaOptions"] == f"-XX:SharedArchiveFile={env_dir}/share/esker/spark/executor.jsa"
            assert "spark.executor.defaultJavaOptions" not in k and "spark.executorEnv.SPARK_CONF_DIR" not in k
            assert {a: b for a, b in e.items() if not SPARK_PLACED.match(a)} == \
                   {a: b for a, b in k.items() if not SPARK_PLACED.match(a)}, opts
            # The S3A keys are never on a command line (PYSPARK_SUBMIT_ARGS becomes spark-submit's argv): they
            # are in $SPARK_CONF_DIR/spark-defaults.conf, a 0600 file in the user's scratch, the same in both modes.
            for env in (emb, k8s):
                assert STORAGE["secret_key"] not in env["PYSPARK_SUBMIT_ARGS"], opts
                assert STORAGE["access_key"] not in env["PYSPARK_SUBMIT_ARGS"], opts
                assert not any(a.startswith("spark.hadoop.fs.s3a.") and a.endswith(".key") for a in spark_conf(
                    env["PYSPARK_SUBMIT_ARGS"]))
            assert emb["SPARK_CONF_DIR"] == f"{placement.scratch_dir}/spark/conf"
            assert k8s["SPARK_CONF_DIR"] == f"{sp.esker_launch_plan.scratch_dir}/spark/conf"
            k_files = dict(sp.esker_launch_plan.files)
            assert list(emb_files) == [f"{emb['SPARK_CONF_DIR']}/spark-defaults.conf"]
            assert list(k_files) == [f"{k8s['SPARK_CONF_DIR']}/spark-defaults.conf"]
            assert list(emb_files.values()) == list(k_files.values()) == [
                "spark.authenticate true\n"
                f"spark.authenticate.secret {SPARK['secret']}\n"
                "spark.ui.filters org.apache.spark.ui.JWSFilter\n"
                f"spark.org.apache.spark.ui.JWSFilter.param.secretKey {SPARK['ui_key']}\n"
                "spark.org.apache.spark.ui.JWSFilter.param.requireExpiration true\n"
                f"spark.hadoop.fs.s3a.access.key {STORAGE['access_key']}\n"
                f"spark.hadoop.fs.s3a.secret.key {STORAGE['secret_key']}\n"]
            # The server's own cluster decides the share (its worker offers only the user's cores), in both modes.
            assert "spark.cores.max" not in e and "spark.cores.max" not in k
            assert emb["SPARK_MASTER"] == k8s["SPARK_MASTER"] == SPARK["master"]
            # The UIs, for JupyterLab's proxy (esker_client.spark_ui): the driver's on loopback at the grant's port.
            assert emb["ESKER_SPARK_UI_PORTS"] == k8s["ESKER_SPARK_UI_PORTS"] == "driver:4040,master:8080,worker:8081"
            assert emb["SPARK_LOCAL_IP"] == k8s["SPARK_LOCAL_IP"] == "127.0.0.1"
            assert e["spark.ui.enabled"] == k["spark.ui.enabled"] == "true" and e["spark.ui.port"] == "4040"
            # The pod writes it from its init container's environment, never from its arguments.
            init = next(c for c in manifest["spec"]["initContainers"] if c["name"] == "esker-scratch")
            assert STORAGE["secret_key"] not in " ".join(init["command"] + init.get("args", []))
            assert list(resolve(init["env"], manifest["secrets"]).values()) == list(k_files.values())
            # ...which the pod's own master and worker read too: the same SPARK_CONF_DIR, after that init container.
            names = [c["name"] for c in manifest["spec"]["initContainers"]]
            assert names[names.index("esker-scratch") + 1:][:2] == ["spark-master", "spark-worker"]
            for c in manifest["spec"]["initContainers"][names.index("esker-scratch") + 1:][:2]:
                assert {e["name"]: e["value"] for e in c["env"]}["SPARK_CONF_DIR"] == k8s["SPARK_CONF_DIR"]
        else:
            assert not emb_files and "SPARK_CONF_DIR" not in emb
        seen += 1
    assert seen == (6 if user == "alice" else 4)  # alice: every choice (gpu-users); bob: no GPU profile


def test_both_backends_draw_and_read_the_same_spawn_form(config_file, tmp_path):
    """One template and one parser: the form is the same page in both modes (the embedded hub here has the
    GPUs the profiles offer), and a submitted form becomes the same user_options."""
    from esker.spawner.local import EskerLocalSpawner

    data = yaml.safe_load(open(config_file))
    data["gpus"]["devices"] = ["0", "1"]
    gpu_config = tmp_path / "esker.yaml"
    gpu_config.write_text(yaml.safe_dump(data))
    form = {"profile": ["tensorflow"], "profile-option-tensorflow--gpus": ["1"], "profile-option-spark--x": ["y"]}

    async def run():
        kube = cli_preview.make_spawner("alice", ("gpu-users",), False, str(gpu_config), {})
        user = cli_preview.PreviewUser(name="alice", groups=[cli_preview._Group("gpu-users")])
        local = EskerLocalSpawner(user=user, config_file=str(gpu_config), state_dir=str(tmp_path / "state"))
        return [(sp.options_form(sp), sp.options_from_form(form)) for sp in (kube, local)]

    (k_page, k_opts), (l_page, l_opts) = asyncio.run(run())
    assert 'name="profile-option-tensorflow--gpus"' in k_page
    # The same page, but for what only the embedded hub knows: how many GPUs are free now.
    free = re.compile(r' \(\d+ of \d+ [^()<]*GPUs? free\)|\s*<div class="esker-limits">\d+ of \d+ [^<]*free</div>')
    assert "(2 of 2 GPUs free)" in l_page and "free)" not in k_page
    assert k_page == free.sub("", l_page)
    assert k_opts == l_opts == {"profile": "tensorflow", "gpus": "1"}
