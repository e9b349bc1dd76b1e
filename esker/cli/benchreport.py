"""`esker bench`'s outputs: results as CSV rows and PNG plots, and the comparison with a reference run."""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def rows(results: dict) -> list[dict]:
    out = []
    for bench, r in results["benchmarks"].items():
        for f in r.get("figures", []):
            out.append({"benchmark": bench, **f})
    return out


def write_csv(results: dict, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["run", "benchmark", "case", "metric", "value", "unit", "better"])
        w.writeheader()
        for r in rows(results):
            w.writerow({"run": results["run_id"], **r})


def plot(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    b = results["benchmarks"]
    spawn = b.get("spawn", {}).get("cases")
    if spawn:
        figure, ax = plt.subplots(figsize=(7, 4))
        labels, data = [], []
        for case in spawn.values():
            lat = [s["seconds"] for s in case["spawns"] if "seconds" in s]
            if lat:
                labels.append(f"{case['concurrency']} users")
                data.append(lat)
        if data:
            ax.boxplot(data, showmeans=True)
            ax.set_xticks(range(1, len(labels) + 1), labels)
        ax.set_ylabel("seconds to ready (progress stream)")
        ax.set_title(f"Spawn latency, {next(iter(spawn.values()))['profile']} profile")
        written.append(_save(figure, out / "spawn_latency.png"))
    burst = b.get("burst", {}).get("attendees")
    if burst:
        figure, ax = plt.subplots(figsize=(7, max(2.5, 0.25 * len(burst) + 1)))
        for i, a in enumerate(burst):
            start = a["arrival_s"]
            if "ready_s" in a:
                ax.barh(i, a["ready_s"], left=start, color="tab:blue", label="spawn" if i == 0 else None)
            if "first_cell_s" in a and "ready_s" in a:
                ax.barh(i, a["first_cell_s"] - a["ready_s"], left=start + a["ready_s"], color="tab:green",
                        label="first cell" if i == 0 else None)
            if "error" in a:
                ax.plot(start, i, "rx")
        ax.set_xlabel("seconds since the first arrival")
        ax.set_ylabel("attendee")
        ax.set_title(f"Workshop burst: {len(burst)} users over {b['burst']['window_s']:.0f}s")
        ax.legend(loc="lower right")
        written.append(_save(figure, out / "burst.png"))
    if b.get("spark", {}).get("samples"):
        written.append(_spark_plot(b["spark"], out / "spark.png"))
    for name in ("spark", "s3", "scratch", "tensorflow"):
        if name == "spark" and b.get("spark", {}).get("samples"):
            continue
        figs = [f for f in b.get(name, {}).get("figures", []) if f["unit"] != "ratio"]
        if not figs:
            continue
        units = sorted({f["unit"] for f in figs})
        figure, axes = plt.subplots(1, len(units), figsize=(4.5 * len(units), 3.5), squeeze=False)
        for ax, unit in zip(axes[0], units):
            sel = [f for f in figs if f["unit"] == unit]
            ax.bar([f"{f['case']}\n{f['metric']}" for f in sel], [f["value"] for f in sel], color="tab:blue")
            ax.set_ylabel(unit)
            ax.tick_params(axis="x", labelsize=8)
        figure.suptitle(name)
        written.append(_save(figure, out / f"{name}.png"))
    return written


def _spark_plot(spark: dict, path: Path) -> str:
    """Spawn to first Spark result per side: the medians of spawn, session and first job stacked, the totals'
    min-max as an error bar, each round's total as a dot."""
    import matplotlib.pyplot as plt

    sides = [s for s in spark["samples"] if spark["samples"][s]]
    figure, ax = plt.subplots(figsize=(7, 4))
    for x, side in enumerate(sides):
        got, bottom = spark["samples"][side], 0.0
        for part, color in (("spawn_s", "tab:blue"), ("session_s", "tab:orange"), ("first_job_s", "tab:green")):
            v = sorted(s[part] for s in got)
            h = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
            ax.bar(x, h, 0.5, bottom=bottom, color=color, label=part.replace("_s", "") if x == 0 else None)
            bottom += h
        totals = [s["total_s"] for s in got]
        ax.errorbar(x, bottom, yerr=[[max(0.0, bottom - min(totals))], [max(0.0, max(totals) - bottom)]],
                    color="black", capsize=6)
        ax.plot([x] * len(totals), totals, "k.", alpha=0.6)
    labels = [f"{s}\n{'local[*]' if spark.get(s, {}).get('master', '').startswith('local') else 'own cluster'}"
              for s in sides]
    ax.set_xticks(range(len(sides)), labels)
    ax.set_ylabel("seconds from the spawn request")
    ratio = spark.get("first_result_ratio")
    ax.set_title(f"Spawn to first Spark result, {spark['rounds']} round(s)"
                 + (f": cluster/local {ratio:.2f}x" if ratio else ""))
    ax.legend(loc="upper right", fontsize=8)
    return _save(figure, path)


def _save(figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path.name


def compare(results: dict, reference: dict) -> list[dict]:
    ref = {(r["benchmark"], r["case"], r["metric"]): r for r in rows(reference)}
    out = []
    for r in rows(results):
        old = ref.get((r["benchmark"], r["case"], r["metric"]))
        if not old or not old["value"]:
            continue
        ratio = r["value"] / old["value"]
        better = (ratio > 1) if r["better"] == "higher" else (ratio < 1)
        out.append({**r, "reference": old["value"], "ratio": round(ratio, 3),
                    "verdict": "same" if abs(ratio - 1) < 0.05 else ("better" if better else "worse")})
    return out


def print_compare(table: list[dict], stream=sys.stdout) -> None:
    print(f"{'benchmark':<11} {'case':<16} {'metric':<16} {'value':>11} {'reference':>11} {'ratio':>7}  verdict",
          file=stream)
    for r in table:
        print(f"{r['benchmark']:<11} {r['case']:<16} {r['metric']:<16} {r['value']:>11.3f} {r['reference']:>11.3f} "
              f"{r['ratio']:>7.3f}  {r['verdict']}", file=stream)
