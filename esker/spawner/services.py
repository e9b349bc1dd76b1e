"""The services a spawn goes through (:class:`esker.core.services.Service`): what each takes before start and
gives back after stop. Object storage and courses work the same in both modes; scratch, GPUs and Spark
differ by where the server runs. What each adds to the environment is the plan's, in esker.core.contributors.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from dataclasses import replace

from tornado import web

from esker import metrics
from esker.core import gpus as gpu_policy
from esker.core.functions import function_of_server
from esker.core.plan import Placement, Selection, with_grants
from esker.courses.content import course_grant
from esker.functions.broker import BrokerError
from esker.objectstore import mounts as s3mounts
from esker.spark import cluster as spark_cluster
from esker.spark.cluster import new_credentials
from esker.state.ledger import NoCapacity
from esker.system import scratch
from esker.system.ports import free_port


class ObjectStorage:
    """The user's S3 identity and bucket, by the profile's policy (EskerSpawner.esker_storage_grant)."""

    name = "storage"

    async def prepare(self, sp, sel: Selection, placement: Placement) -> Placement:
        grant = await sp.esker_storage_grant(sel)
        return with_grants(placement, storage=grant) if grant else placement

    async def release(self, sp) -> None:
        pass  # identities and buckets outlive a server


class BucketMounts:
    """Embedded: the storage grant's buckets as files (esker.objectstore.mounts), so Spark reads ``s3a://`` on
    its executors and pandas, ``open()`` and ``ls`` see the same objects under ``~/s3``. Gives the ``mounts``
    grant; the daemons end at release. Without root, s3fs or /dev/fuse it says why and the server still has
    its S3 keys."""

    name = "mounts"

    async def prepare(self, sp, sel: Selection, placement: Placement) -> Placement:
        storage = placement.grants.get("storage")
        if not storage:
            return placement
        why = mounts_unsupported(sp)
        if why:
            sp.esker_event(76, f"Your bucket is not mounted as files here ({why}): use s3:// with boto3 or s3fs")
            return placement
        uid, gid = sp.esker_ids
        rt = sp.runtime
        # A named server (a function) mounts its own copies: each server's stop ends its own mounts only.
        where = f"{sp.account_name}.{sp.name}" if sp.name else sp.account_name
        root = s3mounts.account_root(rt.state_dir, where)
        plan = s3mounts.plan_mounts(storage, root)
        logs = os.path.join(rt.state_dir, "run", "mounts")
        t0 = time.monotonic()

        def one(m):
            cmd = s3mounts.s3fs_command(m, storage["endpoint"], uid, gid)
            keys = (storage["access_key"], storage["secret_key"])
            if m.name != "bucket":
                # A dataset is mounted with its owner's keys, confined to its prefix and read-only unless the user
                # writes it: s3fs lists the whole bucket at mount, which a reader of one prefix may not (that
                # would show every dataset's key names). Who gets which mount is the policy's dataset_access.
                owner = rt.storage.credentials_for_bucket(m.bucket)
                if owner is None:
                    raise s3mounts.MountError(f"no keys own the dataset bucket {m.bucket}")
                keys = (owner.access_key, owner.secret_key)
            marker = os.path.realpath(rt.state_dir)
            if m.name != "bucket" and m.read_only:
                # One mount per dataset for all its readers (one page cache for a workshop), bound into this
                # user's folder read-only.
                src, cmd = s3mounts.shared_command(m, s3mounts.shared_point(rt.state_dir, m, keys[0]),
                                                   storage["endpoint"])
                env = s3mounts.s3fs_env(src, *keys, marker)
                log = os.path.join(logs, f"shared.{os.path.basename(src.path)}.log")
                return {"path": m.path, "pid": s3mounts.attach_shared(m, src, cmd, env, log), "shared": src.path}
            env = s3mounts.s3fs_env(m, *keys, marker)
            return {"path": m.path, "pid": s3mounts.mount(m, cmd, env, os.path.join(logs, f"{where}.{m.name}.log"))}

        def setup():
            os.makedirs(logs, mode=0o700, exist_ok=True)
            s3mounts.prepare_root(root, gid)

        sp.bucket_mounts = []
        try:
            await asyncio.to_thread(setup)
            # In parallel (none is inside another: plan_mounts leaves out prefixes of a whole-bucket mount).
            done = await asyncio.gather(*(asyncio.to_thread(one, m) for m in plan), return_exceptions=True)
            sp.bucket_mounts = [d for d in done if isinstance(d, dict)]
            failed = [d for d in done if isinstance(d, BaseException)]
            if failed:
                raise failed[0]
        except (s3mounts.MountError, OSError) as e:
            sp.log.error("%s: %s", sp._log_name, e)
            if sel.profile.storage == "required":
                raise web.HTTPError(503, f"Your bucket could not be mounted, and {sel.profile.display_name} "
                                    f"needs it: {e}") from None
            sp.esker_event(76, f"Your bucket could not be mounted as files ({e}); s3:// with boto3 still works")
            await self.release(sp)
            return placement
        # ~/s3 is the default server's (it outlives a function's server, whose mounts end at its stop).
        link = None if sp.name else await asyncio.to_thread(s3mounts.link_home, placement.home, root, uid, gid)
        dirs = s3mounts.dataset_dirs(plan, storage, root)
        sp.log.info("%s: %d bucket mount(s) in %.3f s", sp._log_name, len(plan), time.monotonic() - t0)
        sp.esker_event(77, f"Your bucket and {len(dirs)} dataset(s) are files under {link or root} "
                       "(and s3a:// for Spark)")
        grant = {"root": root, "buckets": ",".join(sorted({m.bucket for m in plan})),
                 "datasets": json.dumps(dirs, sort_keys=True)}
        return with_grants(placement, mounts=grant)

    async def release(self, sp) -> None:
        held, sp.bucket_mounts = list(sp.bucket_mounts or ()), []

        def end(m):
            if m.get("shared"):
                s3mounts.detach_shared(m["path"], m["shared"], m.get("pid"))
            else:
                s3mounts.unmount(m["path"], m.get("pid"))

        await asyncio.gather(*(asyncio.to_thread(end, m) for m in held))


def mounts_unsupported(sp) -> str | None:
    extra = sp.runtime.extra
    if "mounts" not in extra:
        why = "developer mode" if getattr(sp, "developer_mode", True) else s3mounts.unsupported()
        extra["mounts"] = why
        if why:
            sp.log.warning("buckets are not mounted as files on this hub: %s; s3a:// does not work in Spark", why)
    return extra["mounts"]


class Courses:
    """The courses the user takes or teaches: content delivered by the backend, then the ``courses`` grant."""

    name = "courses"

    async def prepare(self, sp, sel: Selection, placement: Placement) -> Placement:
        courses = await asyncio.to_thread(sp.esker_courses)
        sp.esker_course_list = courses
        await sp.esker_deliver_courses(sel, courses, placement)
        grant = course_grant(courses, sel.user)
        return with_grants(placement, courses=grant) if grant else placement

    async def release(self, sp) -> None:
        sp.esker_course_list = None  # the content stays in the home: it is the user's work


class FunctionBroker:
    """A function server's own user of the functions' task broker (functions.broker; esker.core.broker): made
    for this start with a fresh password, deleted at stop (Redis then closes its connections). Its tasks' keys
    stay until they expire, so a result outlives a cull; deleting the function deletes them
    (EskerSpawner.delete_forever). Nothing for notebook servers, nor without a broker."""

    name = "broker"

    async def prepare(self, sp, sel: Selection, placement: Placement) -> Placement:
        admin = sp.runtime.broker
        if sel.function is None or admin is None:
            return placement
        try:
            grant = await asyncio.to_thread(admin.grant, sp.user.name, sel.function)
        except BrokerError as e:
            raise web.HTTPError(503, f"The function {sel.function} cannot start: {e}. Try again shortly.") from None
        sp.esker_event(8, "Task broker user ready")
        return with_grants(placement, broker=grant)

    async def release(self, sp) -> None:
        # From the server's name, not from what this process granted: after a hub restart it is the same user.
        admin, function = sp.runtime.broker, function_of_server(sp.name)
        if admin is not None and function is not None:
            await asyncio.to_thread(admin.revoke, sp.user.name, function)


class InPod:
    """A service the pod spec carries (a volume, a device-plugin resource): nothing to take or give back."""

    def __init__(self, name: str):
        self.name = name

    async def prepare(self, sp, sel: Selection, placement: Placement) -> Placement:
        return placement

    async def release(self, sp) -> None:
        pass


class OwnSpark:
    """Embedded Spark: the server's own master and worker (esker.spark.cluster), as the user, in the server's
    control group, with a fresh secret. ``prepare`` picks the ports and the secret (the grant reaches the driver
    through the 0600 spark-defaults.conf); the backend starts the daemons once that file and the control
    group exist (EskerLocalSpawner.esker_spark_start). An external ``spark.master_url`` gets no cluster."""

    name = "spark"

    async def prepare(self, sp, sel: Selection, placement: Placement) -> Placement:
        rt = sp.runtime
        if not (sel.profile.spark and rt.site.spark) or rt.config["spark"]["master_url"]:
            return placement
        ports = [free_port() for _ in range(4)]  # master, its UI, the worker's UI, a session's driver UI
        creds = new_credentials()
        sp.spark_cluster = {"master_port": ports[0], "master_ui_port": ports[1], "worker_ui_port": ports[2],
                            "ui_port": ports[3], "ui_key": creds["ui_key"], "pids": []}
        return with_grants(placement, spark={"master": f"spark://127.0.0.1:{ports[0]}", **creds,
                                             "master_ui_port": str(ports[1]), "worker_ui_port": str(ports[2]),
                                             "ui_port": str(ports[3])})

    async def release(self, sp) -> None:
        cluster, sp.spark_cluster = sp.spark_cluster, None
        metrics.spark_cluster_stopped(sp.owner_key)
        if cluster and cluster.get("pids"):
            await asyncio.to_thread(spark_cluster.stop, cluster["pids"])


class LocalGpus:
    """GPU ids from the hub's ledger (persistent: a restart cannot hand one out twice), of the type the selection
    asks for; the server's cgroup then allows only these devices (esker.system.devices, set by the backend)."""

    name = "gpus"

    async def prepare(self, sp, sel: Selection, placement: Placement) -> Placement:
        if not sel.gpus:
            return placement
        rt = sp.runtime
        types = rt.config["gpus"]["types"]
        try:
            sp.gpu_devices = await asyncio.to_thread(rt.ledger.assign, "gpu", sp.owner_key, sel.gpus,
                                                     gpu_policy.pool(rt.gpus, sel.gpu_type))
        except NoCapacity as e:
            what = gpu_policy.describe(sel.gpu_type, types)
            raise web.HTTPError(503, f"No {what} is free for {sel.profile.display_name}: {e}. "
                                "Try the CPU-only choice or come back later.") from None
        by_id = {g.id: g for g in rt.gpus}
        names = [f"{d} ({by_id[d].name})" if d in by_id and by_id[d].name else d for d in sp.gpu_devices]
        sp.esker_event(65, f"GPU(s) {', '.join(names)} assigned")
        # CUDA_VISIBLE_DEVICES names them by UUID where NVML gave one (see esker.core.gpus.Gpu.visible_id).
        return replace(placement, gpu_devices=tuple(by_id[d].visible_id if d in by_id else d for d in sp.gpu_devices))

    async def release(self, sp) -> None:
        await asyncio.to_thread(sp.runtime.ledger.release, "gpu", sp.owner_key)
        sp.gpu_devices = ()
        metrics.gpu_released(sp.owner_key)


class LocalScratch:
    """The user's folder under scratch.root (0700, the user's own, with tmp/ and spark/); wiped at stop
    unless the profile keeps it. On a root hub with loop devices it is a filesystem of its own, of the profile's
    scratch_size (esker.system.scratch.mount_quota); elsewhere a plain folder, and the hub says so."""

    name = "scratch"

    async def prepare(self, sp, sel: Selection, placement: Placement) -> Placement:
        sp.scratch_dir = placement.scratch_dir
        uid, gid = sp.esker_ids
        why = scratch_quota_unsupported(sp)
        note = ""
        if why is None:
            t0 = time.monotonic()
            try:
                fresh = await asyncio.to_thread(scratch.mount_quota, sp.scratch_dir, sel.scratch_size, uid, gid,
                                                sel.scratch_keep)
            except scratch.NoRoom as e:
                raise web.HTTPError(503, f"{sel.profile.display_name} cannot start: {e}. "
                                    "Try a profile with less scratch, or come back later.") from None
            sp.log.info("%s: scratch filesystem of %d bytes %s at %s in %.3f s", sp._log_name, sel.scratch_size,
                        "made and mounted" if fresh else "kept, mounted again", sp.scratch_dir,
                        time.monotonic() - t0)
        else:
            note = f" (scratch has no quota here: {why})"
            root = sp.runtime.scratch_root
            free = await asyncio.to_thread(scratch.free_bytes, root)
            if free < sel.scratch_size:
                sp.log.warning("scratch for %s: %d bytes free under %s, profile allows %d",
                               sp.user.name, free, root, sel.scratch_size)
        await asyncio.to_thread(scratch.prepare, sp.scratch_dir, uid, gid)
        sp.esker_event(70, f"Scratch ready at {sp.scratch_dir}{note}")
        return placement

    async def release(self, sp) -> None:
        metrics.scratch_cleared(sp.user.name)
        keep = sp.selection.scratch_keep if sp.selection is not None else True
        if sp.scratch_dir:
            await asyncio.to_thread(_release_scratch, sp.scratch_dir, keep, getattr(sp, "cgroup", None), sp.log)
            if not keep:
                await asyncio.to_thread(scratch.wipe, sp.scratch_dir)
        sp.scratch_dir = ""


def scratch_quota_unsupported(sp) -> str | None:
    """Why this hub's scratch has no quota (None: it has one); the hub log says it once."""
    extra = sp.runtime.extra
    if "scratch_quota" not in extra:
        why = scratch.quota_unsupported(root_user=not getattr(sp, "developer_mode", True))
        extra["scratch_quota"] = why
        if why:
            sp.log.warning("scratch has no quota here: %s; profiles' scratch_size is only reported", why)
    return extra["scratch_quota"]


def _release_scratch(path: str, keep: bool, group, log) -> None:
    """Unmount a server's scratch filesystem, if it has one (and drop its image unless kept). What the server
    left running (orphaned kernels, in its cgroup, which the backend kills at release anyway) would keep it
    busy: that is killed first."""
    err = None
    for attempt in range(50):
        try:
            scratch.release_quota(path, keep)
            return
        except scratch.QuotaError as e:
            err = e
            if attempt == 0 and group is not None:
                for pid in group.procs():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.1)
    # Still busy (a process outside the server's cgroup holds a file there): take it out of the tree now; the
    # kernel frees the filesystem and its loop device when the last file is closed.
    log.error("%s; detaching it lazily", err)
    subprocess.run(["umount", "-l", path], capture_output=True)
    scratch.release_quota(path, keep)
