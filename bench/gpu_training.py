"""TensorFlow training in a spawned server that was given 1 GPU, against a bare process on the same device, side by
side in one run (issue: "training runs on it at the speed of a bare process on the same GPU, at least 0.98x").

* "spawned server": the TensorFlow profile with 1 GPU on a throwaway embedded hub, the training loop run in a
  fresh kernel of the server: its account, its cgroup (CPU and memory limits, the GPU device rule), its
  environment, CUDA_VISIBLE_DEVICES as the hub set it;
* "bare process": the same loop (`esker bench`'s Keras CNN on synthetic data) with the same environment's
  python, as root, outside any cgroup, with the same CUDA_VISIBLE_DEVICES;
* "bare, server's cgroup": that process again, as the server's account inside the server's cgroup (its limits
  and device rule), but not in a kernel: it tells the cgroup's share of a gap from the kernel's.

Sides alternate (which goes first swaps every round), --rounds each; the table shows samples/s as median
(min-max), and the ratio of medians. Then the isolation check: a second user's server (CPU only) opens the first
one's device node, which the kernel must refuse (EPERM), while the first server's own open is let through.

On a machine with NVIDIA GPUs the hub uses NVML (`gpus.devices: auto`) and the CUDA build of the environment.
Without one, the device is a pinned id, training runs on the CPU and the figures are the server's overhead on
the CPU; the device nodes of the check are then made with mknod (major 195) in a temporary folder. CSV and PNG
go into bench/results/gpu-training/.

    sudo .venv/bin/python bench/gpu_training.py [--rounds 5] [--samples 8192] [--epochs 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIDES = ("spawned server", "bare process", "bare, server's cgroup")
OPEN_NODE = """
import errno, os
try:
    os.close(os.open({path!r}, os.O_RDWR))
    print("OPEN opened")
except OSError as e:
    print("OPEN " + errno.errorcode[e.errno])
"""


def result_of(text: str) -> dict:
    """The RESULT line's JSON (the workload prints one)."""
    line = next((x for x in text.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        raise RuntimeError(f"no RESULT in the workload's output:\n{text[-2000:]}")
    return json.loads(line[len("RESULT"):])


def summarize(rows: list[dict]) -> list[dict]:
    """Per side: samples/s median, min, max over the rounds, and the ratio of medians against the bare process."""
    out = []
    for side in SIDES:
        v = [r["samples_per_s"] for r in rows if r["side"] == side]
        if v:
            out.append({"side": side, "n": len(v), "median": statistics.median(v), "min": min(v), "max": max(v),
                        "device": next(r["device"] for r in rows if r["side"] == side)})
    bare = next((s["median"] for s in out if s["side"] == SIDES[1]), None)
    for s in out:
        s["ratio"] = s["median"] / bare if bare else None
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    med = [s["median"] for s in summary]
    err = [[m - s["min"] for m, s in zip(med, summary)], [s["max"] - m for m, s in zip(med, summary)]]
    ax.bar(range(len(summary)), med, yerr=err, capsize=5, color=["#4c72b0", "#dd8452", "#55a868"][: len(summary)])
    ax.set_xticks(range(len(summary)), [f"{s['side']}\n({s['device']})" for s in summary], fontsize=8)
    ax.set_ylabel("samples/s (median, min-max)")
    ratio = next((s["ratio"] for s in summary if s["side"] == SIDES[0]), None)
    where = "on its GPU" if summary and summary[0]["device"] == "GPU" else "on the CPU: no GPU here"
    ax.set_title(f"Keras CNN training in a server given 1 GPU ({where})" + (f"\nserver / bare = {ratio:.3f}"
                 if ratio else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def nvml_answers() -> bool:
    from esker.system.gpus import NvmlUnavailable, read_nvml

    try:
        return bool(read_nvml()["devices"])
    except NvmlUnavailable:
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="rounds per side (default 5)")
    p.add_argument("--samples", type=int, default=8192, help="training samples per epoch (default 8192)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per round (default 2)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu-training"))
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root: servers run as their own accounts in their own cgroups", file=sys.stderr)
        return 2

    from esker.cli.benchworkloads import TF_CODE
    from esker.devhub import RunningHub, prepare_environments
    from esker.devhub import test_config as hub_config
    from esker.hubapi import run_code

    real = nvml_answers()
    state = tempfile.mkdtemp(prefix="esker-bench-gpu-", dir="/tmp")
    os.chmod(state, 0o755)
    cfg = hub_config("x", os.path.join(state, "homes"))
    cfg["gpus"]["devices"] = "auto" if real else ["0"]
    cfg["gpus"]["policy"] = {"idle_timeout": 0, "max_runtime": 0}  # never stopped mid-measurement
    print(f"GPUs: {'NVML (a real device)' if real else 'none: a pinned id, training on the CPU'}", flush=True)
    prepare_environments(["tensorflow-gpu"])
    h = RunningHub(cfg=cfg, state_dir=state)
    nodes = None
    rows: list[dict] = []
    try:
        h.start()
        hub = h.hub
        hub.ensure_user("bench-gpu", groups=["gpu-users"])
        hub.ensure_user("bench-other", groups=["gpu-users"])
        hub.spawn("bench-gpu", {"profile": "tensorflow", "gpus": "1"})
        url, token = f"{h.url}/user/bench-gpu/", hub.user_token("bench-gpu")
        facts = json.loads(run_code(url, token, "import json, os, sys; print(json.dumps({'cuda': os.environ["
                                    "'CUDA_VISIBLE_DEVICES'], 'python': sys.executable}))")["stdout"])
        code = TF_CODE.format(samples=args.samples, epochs=args.epochs)
        bare_env = {"PATH": f"{Path(facts['python']).parent}:/usr/bin:/bin", "HOME": state, "LANG": "C.UTF-8",
                    "CUDA_VISIBLE_DEVICES": facts["cuda"], "TF_CPP_MIN_LOG_LEVEL": "2"}
        st = hub.request("GET", "/users/bench-gpu").json()["servers"][""]["state"]
        import pwd

        acct = pwd.getpwnam(st["account"])
        groups = (st.get("cgroup") or {}).get("paths", [])

        def in_server_group():
            for g in groups:
                Path(g, "cgroup.procs").write_text(str(os.getpid()))
            os.setgid(acct.pw_gid)
            os.setuid(acct.pw_uid)

        for rnd in range(args.rounds):
            for side in (SIDES if rnd % 2 == 0 else SIDES[::-1]):
                if side == SIDES[0]:
                    out = run_code(url, token, code, timeout=1800)
                    res = result_of(out["stdout"] + out["stderr"])
                else:
                    grouped = side == SIDES[2]
                    proc = subprocess.run([facts["python"], "-c", code], capture_output=True, text=True,
                                          timeout=1800, env={**bare_env, "HOME": acct.pw_dir} if grouped else bare_env,
                                          cwd=acct.pw_dir if grouped else state,
                                          preexec_fn=in_server_group if grouped else None)
                    res = result_of(proc.stdout + proc.stderr)
                rows.append({"side": side, "round": rnd, **{k: res[k] for k in ("device", "samples_per_s",
                                                                               "seconds", "samples")}})
                print(f"round {rnd} {side:<15} {res['samples_per_s']:9.1f} samples/s on {res['device']}", flush=True)

        # Isolation: the other user's server may not open this one's device node; this one may.
        held = hub.request("GET", "/users/bench-gpu").json()["servers"][""]["state"]["gpus"][0]
        minor = int(held)
        if real and os.path.exists(f"/dev/nvidia{minor}"):
            node = f"/dev/nvidia{minor}"
        else:
            nodes = tempfile.mkdtemp(prefix="esker-bench-nvnodes-", dir="/tmp")
            os.chmod(nodes, 0o755)
            node = os.path.join(nodes, f"nvidia{minor}")
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(195, minor))
            os.chmod(node, 0o666)
        hub.spawn("bench-other", {"profile": "tensorflow", "gpus": "0"})
        own = run_code(url, token, OPEN_NODE.format(path=node))["stdout"].split("OPEN ")[-1].strip()
        other = run_code(f"{h.url}/user/bench-other/", hub.user_token("bench-other"),
                         OPEN_NODE.format(path=node))["stdout"].split("OPEN ")[-1].strip()
    finally:
        h.teardown()
        if nodes:
            shutil.rmtree(nodes, ignore_errors=True)

    summary = summarize(rows)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "rounds.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(out_dir / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    plot(summary, out_dir / "gpu-training.png")
    print(f"\n{platform.node()}, {os.cpu_count()} CPUs, {args.rounds} rounds, {args.samples}x{args.epochs} samples")
    print(f"{'side':<23}{'device':<8}{'samples/s median (min-max)':<30}ratio")
    for s in summary:
        print(f"{s['side']:<23}{s['device']:<8}{s['median']:9.1f} ({s['min']:.1f}-{s['max']:.1f}){'':<8}"
              f"{s['ratio']:.3f}")
    print(f"device node {node}: its server's open -> {own}; another user's server -> {other} "
          f"({'refused by the kernel' if other == 'EPERM' else 'NOT REFUSED'})")
    print(f"CSV and PNG in {out_dir}")
    return 0 if other == "EPERM" else 1


if __name__ == "__main__":
    sys.exit(main())
