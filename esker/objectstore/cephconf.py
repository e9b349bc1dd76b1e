"""What the single-node Ceph is made of, as data: ceph.conf's text, radosgw's pools and the librados helper
script that batches monitor commands. Pure: esker.objectstore.cephbootstrap writes ceph.conf,
esker.objectstore.cephprocs runs the helper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from esker.objectstore.ceph import CephCluster

RGW_NAME = "client.rgw.esker"
# radosgw's pools, created before radosgw starts: otherwise its first bucket and first PUT wait for
# pool creation (about 2 s each).
RGW_POOLS = (
    ".rgw.root",
    "default.rgw.control",
    "default.rgw.meta",
    "default.rgw.log",
    "default.rgw.buckets.index",
    "default.rgw.buckets.data",
    "default.rgw.buckets.non-ec",
)

# Runs under the system python3, which has Debian's librados binding (python3-rados, pulled in by
# ceph-common): one process and one monitor session for a batch of monitor commands, instead of one
# `ceph` CLI start per command.
RADOS_HELPER = r"""
import json, sys, time
import rados
req = json.load(sys.stdin)
c = rados.Rados(conffile=req["conf"], name="client.admin")
c.conf_set("client_mount_timeout", str(req["timeout"]))
c.conf_set("rados_mon_op_timeout", str(req["timeout"]))
c.connect(timeout=int(req["timeout"]))
out = []
for item in req["commands"]:
    ret, outb, outs = c.mon_command(json.dumps(item["cmd"]), item.get("inbuf", "").encode())
    out.append({"ret": ret, "out": outb.decode(errors="replace"), "err": outs})
    if ret != 0 and ret not in item.get("ok", []):
        break
c.shutdown()
json.dump(out, sys.stdout)
"""



def ceph_conf(c: "CephCluster", fsid: str) -> str:
    """ceph.conf for the cluster ``c`` (its directory, ports and objectstore): written on every start."""
    d = c.dir
    return f"""# Written by esker.objectstore.ceph on every start; edit the CephCluster arguments instead.
[global]
fsid = {fsid}
mon host = [v2:{c.host}:{c.mon_port}]
public addr = {c.host}
cluster addr = {c.host}
ms bind msgr1 = false
ms bind ipv6 = false
ms bind port min = {c.ms_port_min}
ms bind port max = {c.ms_port_max}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = {d}/keys/$name.keyring
log file = {d}/log/$name.log
mon cluster log file = {d}/log/cluster.log
admin socket = {d}/run/$name.asok
run dir = {d}/run
crash dir = {d}/crash
pid file = {d}/run/$name.pid
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
# No ceph-mgr: S3 does not need one; this keeps MGR_DOWN out of the health report.
mon mgr mkfs grace = 315360000
mon data avail warn = 5
mon data avail crit = 2

[mon]
mon data = {d}/mon/$cluster-$id
keyring = $mon_data/keyring
paxos propose interval = 0.05

[osd]
osd data = {d}/osd/$cluster-$id
keyring = $osd_data/keyring
osd objectstore = {c.objectstore}
memstore device bytes = {c.size}
# bluestore: a sparse file, $osd_data/block, created by mkfs
bluestore block create = true
bluestore block size = {c.size}
osd memory target = {c.osd_memory_target}

[{RGW_NAME}]
# tcp_nodelay: without it, small GETs wait ~40 ms each on Nagle + delayed ACK.
rgw frontends = beast endpoint={c.host}:{c.port} tcp_nodelay=1
rgw data = {d}/rgw
# Deleted objects hold their space (memstore: RAM) until garbage collection; default waits are hours.
rgw gc obj min wait = 60
rgw gc processor period = 60
# radosgw starts while the OSD boots: re-check homeless requests every 0.5 s, not every 5 s.
objecter tick interval = 0.5
rgw enable usage log = false
"""
