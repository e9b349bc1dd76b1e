"""Pure tests: config validation, catalog, selection (forged requests), launch plans, traits mapping."""

from __future__ import annotations

import copy
import shlex
import threading
from pathlib import Path

import pytest
import yaml

from esker.system import accounts

from esker.core import config

from esker.app import configurer as traits
from esker.state.ledger import Ledger, NoCapacity
from esker.core.catalog import Catalog, UserInfo
from esker.spawner.base import options_from_form
from esker.core.plan import OptionError, Placement, Site, SparkSite, build_plan, select

REPO = Path(__file__).resolve().parents[2]
RAW = yaml.safe_load((REPO / "esker.yaml").read_text())
CFG = config.validate(copy.deepcopy(RAW))
CAT = Catalog.from_config(CFG)
ALICE = UserInfo("alice")
GPU_USER = UserInfo("gina", frozenset({"gpu-users"}))
SITE = Site(spark=SparkSite("spark://127.0.0.1:7077", cores_per_user=2, executor_memory="2G"))


def bad(mutate) -> str:
    data = copy.deepcopy(RAW)
    mutate(data)
    with pytest.raises(config.ConfigError) as e:
        config.validate(data)
    return str(e.value)


# -- configuration ------------------------------------------------------------------------------------

def test_shipped_config_is_valid_and_has_the_four_profiles():
    assert [p.slug for p in CAT.profiles] == ["spark", "tensorflow", "scikit-learn", "minimal"]
    assert CAT.get("spark").spark and not CAT.get("minimal").spark


def test_config_errors_name_the_field_and_reason():
    msg = bad(lambda d: d["profiles"][1].update(cpu_limit=-1))
    assert "profiles[1].cpu_limit" in msg and "minimum" in msg
    msg = bad(lambda d: d["profiles"][0].update(mem_limti="4G"))
    assert "profiles[0]" in msg and "mem_limti" in msg
    msg = bad(lambda d: d["profiles"][0].update(mem_limit="lots"))
    assert "profiles[0].mem_limit" in msg and "512M" in msg
    msg = bad(lambda d: d["profiles"][2].update(slug="spark"))
    assert "profiles[2].slug" in msg and "another profile" in msg
    msg = bad(lambda d: d["profiles"][3].update(environment="does-not-exist"))
    assert "images/does-not-exist/requirements.lock" in msg
    msg = bad(lambda d: d["profiles"][1]["options"]["gpus"]["choices"]["1"]["override"].update(gpu_type="h100"))
    assert "gpu_type 'h100'" in msg
    msg = bad(lambda d: d["hub"].update(ip="0.0.0.0"))
    assert "hub.ip" in msg and "ESKER_ALLOW_PUBLIC" in msg


def test_config_file_errors(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("profiles: [\n")
    with pytest.raises(config.ConfigError, match="line"):
        config.load(p)
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")


def test_esker_check_command(tmp_path, capsys):
    from esker.cli import main

    assert main(["check", str(REPO / "esker.yaml")]) == 0
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"profiles": [{"slug": "x", "display_name": "X", "image": "i",
                                                "environment": "minimal", "gpus": 99}]}))
    assert main(["check", str(p)]) == 1
    assert "profiles[0].gpus" in capsys.readouterr().err


@pytest.mark.parametrize("text,expected", [("512M", 512 * 1024**2), ("4G", 4 * 1024**3), ("20Gi", 20 * 1024**3),
                                           ("1.5G", int(1.5 * 1024**3)), ("100", 100)])
def test_parse_size(text, expected):
    assert config.parse_size(text) == expected


# -- catalog and selection -----------------------------------------------------------------------------

def test_profile_list_gates_gpu_choices_by_group():
    plain = {p["slug"]: p for p in CAT.profile_list(ALICE, gpus_available=0)}
    assert list(plain["tensorflow"]["profile_options"]["gpus"]["choices"]) == ["0"]
    gpu = {p["slug"]: p for p in CAT.profile_list(GPU_USER, gpus_available=0)}
    choices = gpu["tensorflow"]["profile_options"]["gpus"]["choices"]
    assert list(choices) == ["0", "1", "2"]
    assert choices["1"]["unavailable"].startswith("needs 1 GPU") and not choices["0"]["unavailable"]
    assert not CAT.profile_list(GPU_USER, gpus_available=2)[1]["profile_options"]["gpus"]["choices"]["2"]["unavailable"]


def test_select_defaults_and_choices():
    s = select(CAT, ALICE, {})
    assert s.profile.slug == "spark" and s.gpus == 0
    s = select(CAT, GPU_USER, {"profile": "tensorflow", "gpus": "2"})
    assert s.gpus == 2 and s.choices == {"gpus": "2"} and s.user_options() == {"profile": "tensorflow", "gpus": "2"}
    s = select(CAT, GPU_USER, {"profile": ["tensorflow"], "gpus": ["1"]})  # form-style lists
    assert s.gpus == 1


@pytest.mark.parametrize("options,status,fragment", [
    ({"profile": "nope"}, 400, "unknown profile 'nope'"),
    ({"profile": "tensorflow", "gpus": "1"}, 403, "reserved for the groups gpu-users"),
    ({"profile": "tensorflow", "gpus": "9"}, 400, "not a choice"),
    ({"profile": "minimal", "gpus": "1"}, 400, "has no option 'gpus'"),
    ({"profile": "spark", "image": "evil/root:latest"}, 400, "has no option 'image'"),
    ({"profile": {"x": 1}}, 400, "expected a string"),
    ({"profile": "tensorflow", "gpus": ["1", "2"]}, 400, "expected one value"),
])
def test_forged_options_are_refused(options, status, fragment):
    with pytest.raises(OptionError) as e:
        select(CAT, ALICE, options)
    assert e.value.status == status and fragment in str(e.value)


def test_group_restricted_profile():
    data = copy.deepcopy(RAW)
    data["profiles"][0]["groups"] = ["spark-users"]
    cat = Catalog.from_config(config.validate(data))
    assert [p["slug"] for p in cat.profile_list(ALICE)] == ["tensorflow", "scikit-learn", "minimal"]
    with pytest.raises(OptionError) as e:
        select(cat, ALICE, {"profile": "spark"})
    assert e.value.status == 403
    assert select(cat, UserInfo("root-admin", admin=True), {"profile": "spark"}).profile.slug == "spark"
    assert select(cat, ALICE, {}).profile.slug == "tensorflow"  # default falls to what alice may use


def test_options_from_form_follows_kubespawner_names():
    form = {"profile": ["tensorflow"], "profile-option-tensorflow--gpus": ["1"],
            "profile-option-spark--gpus": ["2"], "_xsrf": ["x"]}
    assert options_from_form(form) == {"profile": "tensorflow", "gpus": "1"}
    assert options_from_form({}) == {}


# -- launch plans ------------------------------------------------------------------------------------

def test_spark_plan_env():
    s = select(CAT, ALICE, {"profile": "spark"})
    plan = build_plan(s, Placement("/scratch/jupyter-alice", python="/envs/spark/bin/python"), SITE)
    env = plan.env
    assert env["SPARK_MASTER"] == "spark://127.0.0.1:7077"
    assert env["SCRATCH_DIR"] == "/scratch/jupyter-alice" and env["TMPDIR"] == "/scratch/jupyter-alice/tmp"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    args = shlex.split(env["PYSPARK_SUBMIT_ARGS"])
    assert args[:2] == ["--master", "spark://127.0.0.1:7077"] and args[-1] == "pyspark-shell"
    conf = dict(a.split("=", 1) for a in args[3::2])
    assert conf["spark.cores.max"] == "2"
    assert conf["spark.executor.memory"] == "2048m"
    assert conf["spark.local.dir"] == "/scratch/jupyter-alice/spark"
    assert conf["spark.pyspark.python"] == "/envs/spark/bin/python"
    assert "AWS_ACCESS_KEY_ID" not in env


def test_non_spark_profiles_get_no_spark():
    s = select(CAT, ALICE, {"profile": "minimal"})
    env = build_plan(s, Placement("/s/a"), SITE).env
    assert "SPARK_MASTER" not in env and "PYSPARK_SUBMIT_ARGS" not in env


def test_gpu_plan_and_storage_grant():
    s = select(CAT, GPU_USER, {"profile": "tensorflow", "gpus": "2"})
    grant = {"endpoint": "http://127.0.0.1:7480", "access_key": "AK", "secret_key": "SK", "region": "default",
             "bucket": "esker-gina"}
    plan = build_plan(s, Placement("/s/g", ("0", "1"), grants={"storage": grant}), SITE)
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "0,1" and plan.gpus == 2
    assert plan.env["AWS_ENDPOINT_URL"] == plan.env["S3_ENDPOINT_URL"] == "http://127.0.0.1:7480"
    assert plan.env["ESKER_BUCKET"] == "esker-gina" and plan.env["AWS_SECRET_ACCESS_KEY"] == "SK"
    with pytest.raises(ValueError, match="placement has 1 GPUs"):
        build_plan(s, Placement("/s/g", ("0",)), SITE)


# -- traits mapping -----------------------------------------------------------------------------------

def _deployment(**kw):
    base = dict(state_dir="/var/lib/esker", config_file="/etc/esker.yaml", port=8000, hub_port=8081,
                proxy_api_port=8001, proxy_command=["chp"], user_password="pw-123456", admin_password="a" * 32)
    base.update(kw)
    return traits.Deployment(**base)


def test_traits_mapping_defaults():
    m = traits.to_traitlets(CFG.data, _deployment())
    assert m["JupyterHub"]["ip"] == "127.0.0.1" and m["JupyterHub"]["hub_ip"] == "127.0.0.1"
    assert m["JupyterHub"]["spawner_class"] == "esker-local"
    assert m["JupyterHub"]["authenticator_class"] == "shared-password"
    assert m["SharedPasswordAuthenticator"]["user_password"] == "pw-123456"
    names = [s["name"] for s in m["JupyterHub"]["services"]]
    # No Spark service: each Spark server runs its own cluster (esker.spark.cluster).
    assert names == ["ceph", "idle-culler", "esker-courses", "esker-functions"]
    assert "esker-admin" not in names  # no token, no admin service


def test_traits_admin_token_and_oauth():
    data = copy.deepcopy(RAW)
    data["auth"] = {"type": "oauth", "oauth": {"client_id": "c", "client_secret": "s", "authorize_url": "https://a",
                                               "token_url": "https://t", "userdata_url": "https://u"}}
    data["spark"] = {"enabled": False}
    m = traits.to_traitlets(config.validate(data).data, _deployment(admin_token="tok"))
    assert m["JupyterHub"]["authenticator_class"] == "generic-oauth"
    assert m["GenericOAuthenticator"]["client_id"] == "c"
    svc = {s["name"]: s for s in m["JupyterHub"]["services"]}
    assert "spark-master" not in svc and svc["esker-admin"]["api_token"] == "tok"
    role = next(r for r in m["JupyterHub"]["load_roles"] if r["name"] == "esker-admin")
    assert "admin:servers" in role["scopes"] and "access:servers" not in role["scopes"]


# -- accounts and the ledger -------------------------------------------------------------------------------

@pytest.mark.parametrize("hub_name,expected", [("bob", "jupyter-bob"), ("root", "jupyter-root")])
def test_system_username_plain(hub_name, expected):
    assert accounts.system_username(hub_name) == expected


def test_system_username_sanitised_is_unique_and_valid():
    names = ["Alice.Smith", "alice-smith", "ALICE.SMITH", "élodie", "名前", "a" * 60, "a" * 61]
    out = [accounts.system_username(n) for n in names]
    assert len(set(out)) == len(out)
    for n in out:
        assert len(n) <= 32 and n.startswith("jupyter-")
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in n) and n == n.lower()


def test_ledger_never_double_assigns(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    pool = ["0", "1", "2"]
    results, errors = {}, []

    def take(i):
        try:
            results[i] = ledger.assign("gpu", f"u{i}/", 1, pool)
        except NoCapacity as e:
            errors.append(str(e))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    given = [d for r in results.values() for d in r]
    assert sorted(given) == pool and len(errors) == 5
    assert "0 of 3 free" in errors[0] and "in use by" in errors[0]
    owner = next(k for k, v in results.items() if v)
    assert ledger.release("gpu", f"u{owner}/") == list(results[owner])
    # A restarted hub (new Ledger object, same file) sees the same assignments.
    again = Ledger(tmp_path / "l.sqlite")
    assert len(again.held("gpu")) == 2
    assert again.claim("gpu", "other/", [d for d in given if d not in results[owner]]) != []


def test_ledger_no_gpus_message(tmp_path):
    with pytest.raises(NoCapacity, match="this machine has none"):
        Ledger(tmp_path / "l.sqlite").assign("gpu", "a/", 1, [])


def test_own_spark_cluster_grant_goes_to_the_private_file_only():
    """A server's own cluster: its master in the environment, its RPC secret and UI key in the 0600
    spark-defaults.conf, no client-side share (the worker offers only the user's cores)."""
    from esker.core.contributors import private_files
    from esker.core.plan import with_grants

    sel = select(CAT, ALICE, {"profile": "spark"})
    grant = {"master": "spark://127.0.0.1:40111", "secret": "s3cr3t-rpc", "ui_key": "uikey_abc"}
    placement = with_grants(Placement(scratch_dir="/scratch/jupyter-alice", python="/env/bin/python"), spark=grant)
    plan = build_plan(sel, placement, SITE)
    assert plan.env["SPARK_MASTER"] == "spark://127.0.0.1:40111"
    assert "spark.cores.max" not in plan.env["PYSPARK_SUBMIT_ARGS"]
    for value in ("s3cr3t-rpc", "uikey_abc"):
        assert all(value not in v for v in plan.env.values())
    [(path, text)] = private_files(sel, placement, SITE).items()
    assert path == "/scratch/jupyter-alice/spark/conf/spark-defaults.conf"
    assert "spark.authenticate true\n" in text and "spark.authenticate.secret s3cr3t-rpc\n" in text
    assert "spark.ui.filters org.apache.spark.ui.JWSFilter\n" in text
    assert "spark.org.apache.spark.ui.JWSFilter.param.secretKey uikey_abc\n" in text
    # Without a grant (an external master) the client default share stays.
    shared = build_plan(sel, Placement(scratch_dir="/s", python="/env/bin/python"), SITE)
    assert "spark.cores.max=2" in shared.env["PYSPARK_SUBMIT_ARGS"]
    # The own cluster's executors map the environment's class archive (esker.spark.archive); no other cluster's.
    args = shlex.split(plan.env["PYSPARK_SUBMIT_ARGS"])
    assert "spark.executor.defaultJavaOptions=-XX:SharedArchiveFile=/env/share/esker/spark/executor.jsa" in args
    assert "spark.executorEnv.SPARK_CONF_DIR=/env/share/esker/spark/executor-conf" in args
    assert "SharedArchiveFile" not in shared.env["PYSPARK_SUBMIT_ARGS"]
    k8s = build_plan(sel, placement, Site(mode="kubernetes", spark=SITE.spark))
    assert "SharedArchiveFile" not in k8s.env["PYSPARK_SUBMIT_ARGS"]
