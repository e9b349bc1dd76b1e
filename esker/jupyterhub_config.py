"""JupyterHub configuration for an embedded Esker hub: `jupyterhub -f` this file (`esker run` does).

Everything comes from esker.yaml ($ESKER_CONFIG) and the state directory ($ESKER_STATE_DIR); add your own
traitlets after it with `esker run -- --Class.trait=value` or a jupyterhub_config.py that loads this one.
"""

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from esker import metrics
from esker.app import configurer as traits
from esker.app import hubtuning
from esker.app import deployment
from esker import resources
from esker.core import config as config_mod
from esker.functions.broker import check_at_start as check_broker
from esker.objectstore.ceph import write_service_state
from esker.runtime import default_state_dir, get_runtime
from esker.system.envs import build_all

c = get_config()  # noqa: F821 (provided by traitlets when JupyterHub loads this file)

config_file = str(resources.default_config())
state_dir = default_state_dir()
cfg = config_mod.load(config_file)  # a broken file stops the hub here, naming the field
runtime = get_runtime(config_file, state_dir)
metrics.install(runtime)  # scrape-time collectors: GPUs (ledger + NVML), servers, Spark
# At 1,000 users (docs/scale.md): the hub's SQLite in WAL mode, its sweep of the proxy's routes in a few queries.
hubtuning.install_sqlite_pragmas()
hubtuning.batched_update_last_activity()

if cfg["spark"]["enabled"] and not cfg["spark"]["master_url"]:
    # Each Spark server's own cluster runs from the Spark profile's environment: build it before the hub
    # serves, so the first Spark spawn of a fresh machine does not wait minutes for it.
    spark_env = next((p.environment for p in runtime.catalog.profiles if p.spark), "spark")
    env = runtime.builder.get(spark_env)
    if not env.ready():
        # JupyterHub loads this file inside its event loop: build in a thread with a loop of its own.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, build_all(runtime.builder, [spark_env])).result()

check_broker(cfg["functions"], os.environ, logging.getLogger("esker"))  # functions.broker: its password, its answer

d = deployment.deployment(cfg, state_dir, config_file)
traits.apply(c, traits.supervised(traits.to_traitlets(cfg.data, d), d))  # services: esker.system.supervise

if cfg["storage"]["enabled"] and not cfg["storage"]["endpoint"]:
    # JupyterHub starts the embedded Ceph once the hub serves; until the service itself says "starting", this
    # record tells a spawn that it is coming (the spawn waits for it: storage.start_wait).
    write_service_state(os.path.join(state_dir, "ceph"), "launching")
