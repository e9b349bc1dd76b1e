"""What a running hub shares between spawners: the validated config, the catalog, the allocation
ledger, the environment builder, the GPUs and the services' endpoints. Built once per hub process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from esker import resources
from esker.core import config as config_mod
from esker.core.catalog import Catalog
from esker.core.plan import Site, SparkSite
from esker.objectstore.service import StorageService
from esker.state.ledger import Ledger
from esker.system.envs import EnvironmentBuilder
from esker.system.gpus import Gpu, configured_gpus

log = logging.getLogger("esker")


def default_state_dir() -> str:
    if os.environ.get("ESKER_STATE_DIR"):
        return os.environ["ESKER_STATE_DIR"]
    if os.geteuid() == 0:
        return "/var/lib/esker"
    return str(Path.home() / ".local" / "share" / "esker")


def spark_site(cfg: dict, mode: str = "embedded") -> SparkSite | None:
    s = cfg["spark"]
    if not s["enabled"]:
        return None
    url = s["master_url"] or f"spark://127.0.0.1:{s['master_port']}"
    return SparkSite(
        master_url=url,
        cores_per_user=s["cores_per_user"],
        executor_memory=s["executor_memory"],
        driver_memory=s["driver_memory"],
    )


@dataclass
class Runtime:
    config: config_mod.EskerConfig
    state_dir: str
    catalog: Catalog
    ledger: Ledger
    builder: EnvironmentBuilder
    gpus: list[Gpu]
    site: Site
    storage: object | None = None  # esker.objectstore.service.StorageService when object storage is enabled
    extra: dict = field(default_factory=dict)

    @property
    def scratch_root(self) -> str:
        return self.config["scratch"]["root"].replace("{state_dir}", self.state_dir)

    @property
    def secrets_dir(self) -> str:
        return os.path.join(self.state_dir, "secrets")


@lru_cache(maxsize=None)
def get_runtime(config_file: str = "", state_dir: str = "") -> Runtime:
    cfg = config_mod.load(config_file or None)
    state_dir = state_dir or default_state_dir()
    os.makedirs(state_dir, exist_ok=True)
    os.chmod(state_dir, 0o711)  # users pass through to envs/ and scratch/, nothing more
    storage = None
    if cfg["storage"]["enabled"]:
        try:
            storage = StorageService.from_config(cfg, state_dir)
        except Exception as e:  # a broken storage set-up must not take the hub down
            log.error("object storage disabled: %s", e)
    return Runtime(
        config=cfg,
        state_dir=state_dir,
        catalog=Catalog.from_config(cfg),
        ledger=Ledger(os.path.join(state_dir, "ledger.sqlite")),
        # ESKER_ENVS_DIR lets several hubs (tests, benchmarks) share built environments.
        builder=EnvironmentBuilder(os.environ.get("ESKER_ENVS_DIR") or os.path.join(state_dir, "envs"),
                                   resources.images_dir()),
        gpus=configured_gpus(cfg["gpus"]["devices"]),
        site=Site(mode="embedded", spark=spark_site(cfg)),
        storage=storage,
    )
