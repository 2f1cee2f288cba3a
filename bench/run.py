#!/usr/bin/env python3
"""Measure ClusterOS the way a user meets it, and print the figures beside the original's.

    .venv/bin/python bench/run.py              # everything (cold build included), ~25 min on 2 cores
    .venv/bin/python bench/run.py --warm       # reuse dist/bench's caches: no cold build
    .venv/bin/python bench/run.py --scale 1,3  # only these cluster sizes

It works in dist/bench/ with its own cache and doit state, so a cold build is
really cold and the user's own dist/ is not touched (it needs the test
cluster's ports: stop your own cluster first). Results: a table on stdout,
dist/bench/bench.json, dist/bench/scale.png (time to `srun -N N` and host
memory per node, against N), and under dist/bench/boot/<N>/ each node's
`systemd-analyze` critical chain and blame: where its boot went.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clusteros import accel  # noqa: E402
from clusteros.spec import load_spec  # noqa: E402
from clusteros.vm import cluster  # noqa: E402
from clusteros.vm.layout import layout  # noqa: E402

BENCH = ROOT / "dist" / "bench"
AGENT_SOURCE = ROOT / "node" / "clusteros_node" / "status.py"
SCALE = (1, 3, 5, 8)

# What the original ClusterOS (Packer, hand-written scripts) took, from its README.
ORIGINAL = {"cold_build_s": "10-20 min", "one_file_rebuild_s": "5-10 min", "boot_to_ssh_s": "30-60 s",
            "cluster_ready_s": "2-3 min", "qcow2_mb": "5 GB image", "cluster_disk_mb": "15 GB for 3 nodes"}
LABELS = {
    "cold_build_s": "cold image build (empty caches), s",
    "noop_rebuild_s": "no-op `doit image`, s",
    "one_file_rebuild_s": "one-file rebuild (node-agent source), s",
    "boot_to_ssh_s": "one node: launch to SSH, s",
    "cluster_ready_s": "3 nodes: launch to `srun -N3` success, s",
    "rss_per_node_mb": "host memory per node (QEMU RSS, 3 nodes), MB",
    "qcow2_mb": "image, qcow2, MB",
    "raw_allocated_mb": "image, raw allocated, MB",
    "raw_gz_mb": "image, raw.gz, MB",
    "cluster_disk_mb": "running 3-node cluster beyond the image, MB",
    "build_peak_rss_mb": "peak memory of a build process, MB",
}


def env() -> dict:
    e = dict(os.environ, CLUSTEROS_DIST=str(BENCH), CLUSTEROS_CACHE_DIR=str(BENCH / "cache"))
    e.pop("CLUSTEROS_SPEC", None)
    return e


def doit(*args: str, timeout: float = 3600) -> float:
    """Run doit in the bench tree; return wall seconds. Output goes to dist/bench/bench.log."""
    started = time.monotonic()
    with open(BENCH / "bench.log", "a") as log:
        log.write(f"\n$ doit {' '.join(args)}\n")
        log.flush()
        code = subprocess.call([sys.executable, "-m", "doit", *args], cwd=ROOT, env=env(), stdout=log,
                               stderr=subprocess.STDOUT, timeout=timeout)
    if code != 0:
        raise SystemExit(f"bench: doit {' '.join(args)} failed; see {BENCH / 'bench.log'}")
    return time.monotonic() - started


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def mb(n: float) -> float:
    return round(n / 1e6, 1)


# --------------------------------------------------------------------------
# The build


def measure_build(warm: bool, name: str) -> dict:
    results: dict = {}
    if not warm:
        shutil.rmtree(BENCH, ignore_errors=True)
    BENCH.mkdir(parents=True, exist_ok=True)
    say("cold build (rootfs, image, raw, gz) ...")
    results["cold_build_s"] = None if warm and (BENCH / f"{name}.raw.gz").exists() else round(doit(), 1)
    doit()   # everything exists when --warm skipped the cold build
    say("no-op rebuild ...")
    results["noop_rebuild_s"] = round(min(doit("image") for _ in range(3)), 2)
    say("one-file rebuild ...")
    original = AGENT_SOURCE.read_text()
    try:
        AGENT_SOURCE.write_text(original + f"\n# bench {time.time()}\n")
        results["one_file_rebuild_s"] = round(doit("image"), 1)
    finally:
        AGENT_SOURCE.write_text(original)
    doit()   # back to the committed sources
    results["build_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    qcow2, raw, gz = (BENCH / f"{name}{s}" for s in (".qcow2", ".raw", ".raw.gz"))
    results.update(qcow2_mb=mb(qcow2.stat().st_size), raw_allocated_mb=mb(raw.stat().st_blocks * 512),
                   raw_gz_mb=mb(gz.stat().st_size))
    return results


# --------------------------------------------------------------------------
# Boots


def until(check, timeout: float, every: float = 2.0) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"bench: gave up after {timeout:.0f}s")
        time.sleep(every)
    return time.monotonic() - started


def qemu_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def save_boot_analysis(spec: dict, count: int) -> None:
    """Each node's critical chain and blame, under dist/bench/boot/<count>/<node>.txt."""
    folder = BENCH / "boot" / str(count)
    folder.mkdir(parents=True, exist_ok=True)
    for node in cluster.running_nodes(spec):
        node.wait_until_succeeds("systemctl is-system-running --wait >/dev/null || true", timeout=120)
        out = node.execute("systemd-analyze; systemctl is-system-running; systemd-analyze critical-chain; "
                           "systemd-analyze blame", timeout=120)
        (folder / f"{node.name}.txt").write_text(out.stdout + out.stderr)


def measure_cluster(spec: dict, count: int) -> dict:
    """Launch `count` nodes; seconds to SSH and to `srun -N count` success; QEMU RSS per node."""
    doit("vm_clean")
    started = time.monotonic()
    doit("test_vm", "--nodes", str(count))
    to_ssh = time.monotonic() - started
    first = cluster.node_handle(spec, layout(spec, count)[0], scale=1.0)

    def srun_ok() -> bool:
        out = first.execute(f"srun -N{count} hostname", timeout=120)
        return out.status == 0 and len(set(out.stdout.split())) == count
    until(srun_ok, 1800, every=3)
    ready = time.monotonic() - started
    save_boot_analysis(spec, count)
    pids = [cluster.machine(n).pid() for n in layout(spec, count)]
    rss = [qemu_rss_mb(pid) for pid in pids if pid]
    disk = mb(sum(p.stat().st_blocks * 512 for p in (BENCH / "vm").rglob("overlay.qcow2")))
    return {"nodes": count, "ssh_s": round(to_ssh, 1), "srun_s": round(ready, 1),
            "rss_mb_per_node": round(sum(rss) / len(rss), 1), "overlay_mb": disk}


def measure_scale(spec: dict, sizes: list[int]) -> list[dict]:
    rows = []
    for count in sizes:
        say(f"{count} node(s): launch to `srun -N{count}` ...")
        rows.append(measure_cluster(spec, count))
        say(f"  {rows[-1]}")
    doit("vm_clean")
    return rows


# --------------------------------------------------------------------------
# Report


def machine() -> dict:
    acc = accel.choose("auto")
    return {"cores": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            "accel": acc.name, "accel_reason": acc.reason, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def headline(results: dict, scale: list[dict]) -> dict:
    by_size = {row["nodes"]: row for row in scale}
    if 1 in by_size:
        results["boot_to_ssh_s"] = by_size[1]["ssh_s"]
    if 3 in by_size:
        results.update(cluster_ready_s=by_size[3]["srun_s"], rss_per_node_mb=by_size[3]["rss_mb_per_node"],
                       cluster_disk_mb=by_size[3]["overlay_mb"])
    return results


def table(results: dict, scale: list[dict], host: dict) -> str:
    lines = [f"ClusterOS bench on {host['cores']} cores, {host['memory_gb']} GiB, {host['accel'].upper()} "
             f"({host['date']})", ""]
    width = max(len(v) for v in LABELS.values())
    lines += [f"{'measure':<{width}}  {'ClusterOS':>10}  original ClusterOS", f"{'-' * width}  {'-' * 10}  {'-' * 18}"]
    for key, label in LABELS.items():
        value = results.get(key)
        lines.append(f"{label:<{width}}  {'-' if value is None else f'{value:g}':>10}  {ORIGINAL.get(key, '')}")
    lines += ["", f"{'nodes':>5}  {'to SSH, s':>9}  {'to srun -N, s':>13}  {'QEMU RSS per node, MB':>21}"]
    lines += [f"{r['nodes']:>5}  {r['ssh_s']:>9}  {r['srun_s']:>13}  {r['rss_mb_per_node']:>21}" for r in scale]
    return "\n".join(lines)


def plot(scale: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
    sizes = [r["nodes"] for r in scale]
    figure, left = pyplot.subplots(figsize=(7, 4.2))
    left.plot(sizes, [r["srun_s"] for r in scale], "o-", color="tab:blue", label="launch to srun -N N success")
    left.set_xlabel("nodes in the test cluster")
    left.set_ylabel("seconds", color="tab:blue")
    right = left.twinx()
    right.plot(sizes, [r["rss_mb_per_node"] for r in scale], "s--", color="tab:red", label="QEMU RSS per node")
    right.set_ylabel("MB per node", color="tab:red")
    right.set_ylim(bottom=0)
    left.set_ylim(bottom=0)
    left.set_xticks(sizes)
    figure.legend(loc="upper left", bbox_to_anchor=(0.1, 0.95))
    left.set_title("ClusterOS test cluster on one host (TCG)" if accel.choose("auto").name == "tcg"
                   else "ClusterOS test cluster on one host")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", action="store_true", help="keep dist/bench's caches: no cold build")
    parser.add_argument("--scale", default=",".join(map(str, SCALE)), help="cluster sizes (default: %(default)s)")
    args = parser.parse_args()
    spec = load_spec(ROOT / "cluster.yaml")
    os.environ.update(CLUSTEROS_DIST=str(BENCH), CLUSTEROS_CACHE_DIR=str(BENCH / "cache"))
    host = machine()
    results = measure_build(args.warm, spec["cluster"]["name"])
    scale = measure_scale(spec, [int(n) for n in args.scale.split(",")])
    results = headline(results, scale)
    (BENCH / "bench.json").write_text(json.dumps({"machine": host, "results": results, "scale": scale}, indent=2))
    plot(scale, BENCH / "scale.png")
    print(table(results, scale, host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
