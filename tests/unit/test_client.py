"""esker_client, the notebook-side helper (images/esker-client): pure tests over a monkeypatched environment."""

from __future__ import annotations

import io
import json
import os
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
try:
    import esker_client  # noqa: F401  (installed in a notebook environment)
except ImportError:  # the test venv: use the source tree
    sys.path.insert(0, str(ROOT / "images" / "esker-client" / "src"))

import esker_client as ec  # noqa: E402
from esker_client import gpu as gpus_mod  # noqa: E402

VARS = (
    "SPARK_MASTER PYSPARK_SUBMIT_ARGS PYSPARK_PYTHON SCRATCH_DIR TMPDIR CUDA_VISIBLE_DEVICES ESKER_GPUS "
    "AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION S3_ENDPOINT_URL ESKER_BUCKET "
    "ESKER_DATASETS ESKER_PROFILE ESKER_ENVIRONMENT ESKER_CPU_LIMIT ESKER_MEM_LIMIT ESKER_SCRATCH_SIZE"
).split()

SECRET = "s3cr3t-value-never-printed"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for v in VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(gpus_mod, "_nvml", lambda: None)  # never touch a real driver here
    return monkeypatch


def storage(monkeypatch, endpoint="http://127.0.0.1:7480"):
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDALICE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "default")
    monkeypatch.setenv("ESKER_BUCKET", "esker-alice")


def submit_args(conf: dict) -> str:
    # The shape spawner/plan.py's spark_env writes.
    args = ["--master", conf["spark.master"]]
    for k, v in conf.items():
        if k != "spark.master":
            args += ["--conf", f"{k}={v}"]
    return shlex.join(args + ["pyspark-shell"])


# --- errors -----------------------------------------------------------------------------------------


def test_not_configured_names_variable_profile_and_admin(monkeypatch):
    monkeypatch.setenv("ESKER_PROFILE", "minimal")
    with pytest.raises(ec.EskerNotConfigured) as e:
        ec.scratch_dir()
    assert e.value.variable == "SCRATCH_DIR"
    assert "SCRATCH_DIR" in str(e.value) and "'minimal'" in str(e.value)
    assert "administrator" in str(e.value)


def test_empty_value_counts_as_unset(monkeypatch):
    monkeypatch.setenv("ESKER_BUCKET", "  ")
    with pytest.raises(ec.EskerNotConfigured, match="ESKER_BUCKET"):
        ec.bucket()


# --- scratch ----------------------------------------------------------------------------------------


def test_scratch_dir_is_created(monkeypatch, tmp_path):
    target = tmp_path / "scratch" / "alice"
    monkeypatch.setenv("SCRATCH_DIR", str(target))
    p = ec.scratch_dir()
    assert p == target and p.is_dir()
    assert ec.scratch_dir() == target  # idempotent


# --- storage ----------------------------------------------------------------------------------------


def test_bucket(monkeypatch):
    storage(monkeypatch)
    assert ec.bucket() == "esker-alice"


def test_credentials_missing_names_key(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://x")
    with pytest.raises(ec.EskerNotConfigured) as e:
        ec.s3_client()
    assert e.value.variable == "AWS_ACCESS_KEY_ID"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    with pytest.raises(ec.EskerNotConfigured) as e:
        ec.s3fs_filesystem()
    assert e.value.variable == "AWS_SECRET_ACCESS_KEY"


def test_endpoint_falls_back_to_s3_endpoint_url(monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://rgw:7480")
    assert ec.endpoint_url() == "http://rgw:7480"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://other:80")
    assert ec.endpoint_url() == "http://other:80"


def test_s3_client_from_env(monkeypatch):
    pytest.importorskip("boto3")
    storage(monkeypatch)
    c = ec.s3_client()
    assert c.meta.endpoint_url == "http://127.0.0.1:7480"
    assert c.meta.region_name == "default"
    assert c.meta.config.s3["addressing_style"] == "path"
    creds = c._request_signer._credentials
    assert creds.access_key == "AKIDALICE" and creds.secret_key == SECRET
    # Caller's keywords win.
    assert ec.s3_client(region_name="eu-1").meta.region_name == "eu-1"


def test_s3fs_filesystem_from_env(monkeypatch):
    pytest.importorskip("s3fs")
    storage(monkeypatch)
    fs = ec.s3fs_filesystem()
    assert fs.key == "AKIDALICE" and fs.secret == SECRET
    assert fs.client_kwargs["endpoint_url"] == "http://127.0.0.1:7480"


def test_storage_options(monkeypatch):
    storage(monkeypatch)
    assert ec.storage_options() == {
        "key": "AKIDALICE",
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:7480", "region_name": "default"},
    }


def test_missing_package_is_clear(monkeypatch):
    storage(monkeypatch)
    monkeypatch.setenv("ESKER_PROFILE", "minimal")
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs -> ImportError
    with pytest.raises(ec.EskerPackageMissing) as e:
        ec.s3fs_filesystem()
    assert isinstance(e.value, ec.EskerNotConfigured) and isinstance(e.value, ImportError)
    assert e.value.package == "s3fs"
    assert "'s3fs'" in str(e.value) and "'minimal' profile" in str(e.value)


# --- datasets ---------------------------------------------------------------------------------------


def test_datasets_unset_is_empty():
    assert ec.datasets() == {}


def test_datasets_and_urls(monkeypatch):
    shared = {"weather": "s3://esker-datasets/weather/", "census": "s3://esker-datasets/census/2020/"}
    monkeypatch.setenv("ESKER_DATASETS", json.dumps(shared))
    assert ec.datasets() == shared
    assert ec.dataset_url("weather") == "s3://esker-datasets/weather/"
    assert ec.dataset_url("weather", scheme="s3a") == "s3a://esker-datasets/weather/"
    with pytest.raises(ec.EskerNotConfigured) as e:
        ec.dataset_url("nope")
    assert e.value.variable == "ESKER_DATASETS"
    assert "census, weather" in str(e.value)


def test_dataset_is_the_local_folder_where_mounted_else_the_url(monkeypatch, tmp_path):
    shared = {"weather": "s3://esker-datasets/weather/", "census": "s3://esker-datasets/census/2020/"}
    monkeypatch.setenv("ESKER_DATASETS", json.dumps(shared))
    monkeypatch.setenv("ESKER_BUCKET", "esker-alice")
    assert ec.dataset("weather") == "s3://esker-datasets/weather/"  # Kubernetes: no files
    assert ec.s3_dir() is None
    with pytest.raises(ec.EskerNotConfigured, match="s3://esker-alice/"):
        ec.bucket_dir()
    monkeypatch.setenv("ESKER_S3_DIR", str(tmp_path))
    monkeypatch.setenv("ESKER_DATASET_DIRS", json.dumps({"weather": f"{tmp_path}/esker-datasets/weather"}))
    assert ec.dataset("weather") == f"{tmp_path}/esker-datasets/weather"
    assert ec.dataset("census") == "s3://esker-datasets/census/2020/"  # shared, not mounted
    assert ec.bucket_dir() == tmp_path / "esker-alice"
    with pytest.raises(ec.EskerNotConfigured, match="census, weather"):
        ec.dataset("nope")


def test_dataset_url_when_none_shared():
    with pytest.raises(ec.EskerNotConfigured, match="ESKER_DATASETS is not set"):
        ec.dataset_url("weather")


@pytest.mark.parametrize("raw", ["{not json", '["s3://a/b"]', '{"a": 1}'])
def test_datasets_malformed(monkeypatch, raw):
    monkeypatch.setenv("ESKER_DATASETS", raw)
    with pytest.raises(ec.EskerNotConfigured) as e:
        ec.datasets()
    assert e.value.variable == "ESKER_DATASETS"


# --- spark ------------------------------------------------------------------------------------------


def test_spark_not_configured_names_spark_master(monkeypatch):
    monkeypatch.setenv("ESKER_PROFILE", "scikit-learn")
    with pytest.raises(ec.EskerNotConfigured) as e:
        ec.spark_session()
    assert e.value.variable == "SPARK_MASTER"
    assert "Spark profile" in str(e.value)


def test_spark_without_pyspark_is_clear(monkeypatch):
    monkeypatch.setenv("SPARK_MASTER", "spark://127.0.0.1:7077")
    monkeypatch.setenv("ESKER_PROFILE", "minimal")
    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(ec.EskerPackageMissing) as e:
        ec.spark_session()
    assert e.value.package == "pyspark" and "'minimal' profile" in str(e.value)


def test_session_conf_keeps_what_submit_args_set(monkeypatch, tmp_path):
    storage(monkeypatch)
    monkeypatch.setenv("SCRATCH_DIR", str(tmp_path))
    planned = {
        "spark.master": "spark://127.0.0.1:7077",
        "spark.local.dir": f"{tmp_path}/spark",
        "spark.cores.max": "1",
        "spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:7480",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.access.key": "AKIDALICE",
        "spark.hadoop.fs.s3a.secret.key": SECRET,
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
    }
    monkeypatch.setenv("SPARK_MASTER", planned["spark.master"])
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", submit_args(planned))
    conf = ec.session_conf("weather", {"spark_sql_shuffle_partitions": 4, "spark.ui.enabled": False})
    # Nothing the submit args carry is repeated; only the region (absent there) is added.
    assert conf == {
        "spark.hadoop.fs.s3a.endpoint.region": "default",
        "spark.app.name": "weather",
        "spark.sql.shuffle.partitions": "4",
        "spark.ui.enabled": "false",
    }


def test_session_conf_without_submit_args_fills_in(monkeypatch, tmp_path):
    storage(monkeypatch, endpoint="https://rgw.example.org")
    monkeypatch.setenv("SCRATCH_DIR", str(tmp_path) + "/")
    monkeypatch.setenv("SPARK_MASTER", "local[2]")
    conf = ec.session_conf()
    assert conf["spark.master"] == "local[2]"
    assert conf["spark.local.dir"] == f"{tmp_path}/spark"
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "https://rgw.example.org"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "true"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    # Never the keys: pyspark would put them on spark-submit's command line (see secret_conf).
    assert not any(k.endswith((".access.key", ".secret.key")) for k in conf)
    assert ec.spark.secret_conf() == {"spark.hadoop.fs.s3a.access.key": "AKIDALICE",
                                      "spark.hadoop.fs.s3a.secret.key": SECRET}
    assert "spark.app.name" not in conf


def test_secret_conf_defers_to_the_private_defaults_file(monkeypatch, tmp_path):
    storage(monkeypatch)
    (tmp_path / "spark-defaults.conf").write_text(
        f"spark.hadoop.fs.s3a.access.key AKIDALICE\nspark.hadoop.fs.s3a.secret.key {SECRET}\n")
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    assert ec.spark.secret_conf() == {}
    monkeypatch.delenv("SPARK_CONF_DIR")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert ec.spark.secret_conf() == {}


def test_private_conf_dir_is_owner_only(monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("SPARK_CONF_DIR", raising=False)
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    d = ec.spark._private_conf_dir({"spark.hadoop.fs.s3a.secret.key": SECRET})
    f = os.path.join(d, "spark-defaults.conf")
    assert os.stat(d).st_mode & 0o777 == 0o700 and os.stat(f).st_mode & 0o777 == 0o600
    assert open(f).read() == f"spark.hadoop.fs.s3a.secret.key {SECRET}\n"


def test_session_conf_master_from_submit_args_only(monkeypatch):
    monkeypatch.setenv("SPARK_MASTER", "local[2]")
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", "--master local[2] pyspark-shell")
    assert ec.session_conf() == {}


def test_session_conf_tolerates_odd_submit_args(monkeypatch):
    monkeypatch.setenv("SPARK_MASTER", "local[1]")
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", "--master=local[1] --conf=spark.local.dir=/x 'unterminated")
    assert ec.session_conf() == {"spark.master": "local[1]"}


# --- GPUs -------------------------------------------------------------------------------------------


class FakeNVML:
    names = {0: "NVIDIA A100-SXM4-40GB", 1: "NVIDIA A100-SXM4-40GB", 2: "NVIDIA H100 80GB HBM3"}

    def nvmlDeviceGetCount(self):
        return 3

    def nvmlDeviceGetHandleByIndex(self, i):
        if i not in self.names:
            raise RuntimeError("invalid index")
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return int(uuid.rsplit("-", 1)[1])

    def nvmlDeviceGetName(self, h):
        return self.names[h].encode()  # older bindings return bytes

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=40 * 2**30)

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-fake-{h}"


def test_gpus_empty_means_cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert ec.gpus() == [] and ec.visible_device_ids() == []


def test_gpus_ids_without_nvml(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1, 2")
    got = ec.gpus()
    assert [(g.id, g.index, g.name) for g in got] == [("1", 0, None), ("2", 1, None)]


def test_gpus_with_nvml_names(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-fake-0")
    got = ec.gpus(nvml=FakeNVML())
    assert [(g.id, g.index, g.name, g.uuid) for g in got] == [
        ("2", 0, "NVIDIA H100 80GB HBM3", "GPU-fake-2"),
        ("GPU-fake-0", 1, "NVIDIA A100-SXM4-40GB", "GPU-fake-0"),
    ]
    assert got[0].memory_mib == 40 * 1024
    assert str(got[0]) == "cuda:0 (host GPU 2: NVIDIA H100 80GB HBM3, 40960 MiB)"


def test_gpus_list_ends_at_invalid_entry(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,-1,2")
    assert ec.visible_device_ids() == ["0"]


def test_gpus_unset_lists_what_nvml_sees():
    assert [g.id for g in ec.gpus(nvml=FakeNVML())] == ["0", "1", "2"]
    assert ec.gpus() == []  # no NVML: nothing known
    assert ec.visible_device_ids() is None


# --- describe ---------------------------------------------------------------------------------------


def test_describe_full_server(monkeypatch, tmp_path):
    storage(monkeypatch)
    monkeypatch.setenv("ESKER_PROFILE", "spark")
    monkeypatch.setenv("ESKER_ENVIRONMENT", "spark")
    monkeypatch.setenv("ESKER_CPU_LIMIT", "2")
    monkeypatch.setenv("ESKER_MEM_LIMIT", str(4 * 2**30))
    monkeypatch.setenv("SCRATCH_DIR", str(tmp_path))
    monkeypatch.setenv("TMPDIR", f"{tmp_path}/tmp")
    monkeypatch.setenv("SPARK_MASTER", "spark://127.0.0.1:7077")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("ESKER_DATASETS", json.dumps({"weather": "s3://esker-datasets/weather/"}))
    out = io.StringIO()
    ec.describe(file=out)
    text = out.getvalue()
    assert "profile spark" in text and "2 CPU" in text and "4.0 GiB memory" in text
    assert "spark://127.0.0.1:7077" in text
    assert "esker-alice" in text and "http://127.0.0.1:7480" in text
    assert "weather -> s3://esker-datasets/weather/" in text
    assert "CPU only" in text
    assert SECRET not in text and "AKIDALICE" not in text
    s = ec.summary()
    assert SECRET not in json.dumps(s) and s["storage_credentials"] is True and s["gpus"] == []


def test_describe_bare_environment():
    out = io.StringIO()
    ec.describe(file=out)
    text = out.getvalue()
    assert "ESKER_PROFILE is not set" in text
    assert "SPARK_MASTER is not set" in text and "AWS_ACCESS_KEY_ID is not set" in text
    assert "Datasets: none shared" in text


def test_describe_reports_bad_datasets(monkeypatch):
    monkeypatch.setenv("ESKER_DATASETS", "{oops")
    out = io.StringIO()
    ec.describe(file=out, nvml=FakeNVML())
    text = out.getvalue()
    assert "ESKER_DATASETS is not valid JSON" in text
    assert "NVIDIA H100 80GB HBM3" in text  # CUDA_VISIBLE_DEVICES unset: every NVML device
