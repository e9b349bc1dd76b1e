"""What a running hub shares between spawners: the validated config, the catalog, the allocation
ledger, the environment builder, the GPUs and the services' endpoints. Built once per hub process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from esker import resources
from esker.core import config as config_mod
from esker.core.catalog import Catalog
from esker.core.plan import Site, SparkSite
from esker.functions.broker import BrokerAdmin, admin_from_config
from esker.objectstore.service import StorageService
from esker.state.ledger import Ledger
from esker.system.dcgm_source import DcgmSource
from esker.system.envs import EnvironmentBuilder, cuda_wanted
from esker.system.gpus import Gpu, UsageReader, configured_gpus

log = logging.getLogger("esker")


def default_state_dir(mode: str = "embedded") -> str:
    if os.environ.get("ESKER_STATE_DIR"):
        return os.environ["ESKER_STATE_DIR"]
    if mode == "kubernetes":
        return "/srv/jupyterhub/esker"  # the hub's persistent volume in z2jh
    if os.geteuid() == 0:
        return "/var/lib/esker"
    return str(Path.home() / ".local" / "share" / "esker")


def spark_site(cfg: dict, mode: str = "embedded") -> SparkSite | None:
    s = cfg["spark"]
    if not s["enabled"]:
        return None
    url = s["master_url"] or ""  # "": each server's own (its grant names the master)
    return SparkSite(
        master_url=url,
        cores_per_user=s["cores_per_user"],
        executor_memory=s["executor_memory"],
        driver_memory=s["driver_memory"],
    )


@dataclass
class Runtime:
    """One per hub process and mode. The embedded-only parts (ledger, environment builder) are made on first
    use, so the Kubernetes hub never opens them."""

    config: config_mod.EskerConfig
    state_dir: str
    mode: str
    catalog: Catalog
    gpus: list[Gpu]
    site: Site
    storage: object | None = None  # esker.objectstore.service.StorageService when object storage is enabled
    broker: BrokerAdmin | None = None  # functions.broker's admin client when a url is set
    gpu_problem: str | None = None  # why this hub hands out no GPU (no driver, NVML failing), for users and operators
    extra: dict = field(default_factory=dict)

    @cached_property
    def gpu_usage(self) -> UsageReader:
        """Each device's use now (NVML, embedded mode), shared by the servers' GPU policy and /hub/metrics."""
        return UsageReader(self.config["gpus"]["metrics_interval"])

    def gpu_source(self) -> DcgmSource | None:
        """Kubernetes: the DCGM exporter at gpus.metrics_url, read for GPU use per pod; None when unset."""
        g = self.config["gpus"]
        if self.mode != "kubernetes" or not g["metrics_url"]:
            return None
        return self.extra.get("dcgm") or self.extra.setdefault("dcgm", DcgmSource(g["metrics_url"],
                                                                                  g["metrics_interval"]))

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(os.path.join(self.state_dir, "ledger.sqlite"))

    @cached_property
    def builder(self) -> EnvironmentBuilder:
        # ESKER_ENVS_DIR lets several hubs (tests, benchmarks) share built environments. CUDA builds where NVML
        # answers for a GPU (not for self.gpus, which may be pinned ids without a driver), or as ESKER_CUDA says.
        return EnvironmentBuilder(os.environ.get("ESKER_ENVS_DIR") or os.path.join(self.state_dir, "envs"),
                                  resources.images_dir(), cuda=cuda_wanted())

    @property
    def scratch_root(self) -> str:
        return self.config["scratch"]["root"].replace("{state_dir}", self.state_dir)

    @property
    def secrets_dir(self) -> str:
        return os.path.join(self.state_dir, "secrets")


def get_runtime(config_file: str = "", state_dir: str = "", mode: str = "embedded") -> Runtime:
    """The runtime for a config file, state directory and mode, built once.

    On Kubernetes the file is a mounted ConfigMap that the kubelet updates in place, so a changed file gives a
    new runtime; the embedded hub started its services (Spark, Ceph) from the file and restarts to change it.
    """
    path = config_file or str(resources.default_config())
    version = 0
    if mode == "kubernetes":
        try:
            version = os.stat(path).st_mtime_ns
        except OSError:
            pass  # the loader names the missing file
    return _runtime(path, state_dir or default_state_dir(mode), mode, version)


@lru_cache(maxsize=8)
def _runtime(config_file: str, state_dir: str, mode: str, _version: int) -> Runtime:
    cfg = config_mod.load(config_file)
    if mode == "embedded":  # on Kubernetes it is the hub's volume, made by the chart
        os.makedirs(state_dir, exist_ok=True)
        os.chmod(state_dir, 0o711)  # users pass through to envs/ and scratch/, nothing more
    storage = None
    if cfg["storage"]["enabled"]:
        try:
            storage = StorageService.from_config(cfg, state_dir, mode=mode)
        except Exception as e:  # a broken storage set-up must not take the hub down
            log.error("object storage disabled: %s", e)
    broker = admin_from_config(cfg["functions"], os.environ)  # connects at first use (the hub checks it at start)
    gpus, gpu_problem = (configured_gpus(cfg["gpus"]["devices"], cfg["gpus"]["types"]) if mode == "embedded"
                         else ([], None))
    return Runtime(
        config=cfg,
        state_dir=state_dir,
        mode=mode,
        catalog=Catalog.from_config(cfg),
        gpus=gpus,
        gpu_problem=gpu_problem,
        site=Site(mode=mode, spark=spark_site(cfg) if mode == "embedded" else None),
        storage=storage,
        broker=broker,
    )
