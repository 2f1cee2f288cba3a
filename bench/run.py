#!/usr/bin/env python3
"""Measure ClusterOS the way a user meets it, and print the figures beside the original's.

    .venv/bin/python bench/run.py              # everything (cold build included), ~25 min on 2 cores
    .venv/bin/python bench/run.py --warm       # reuse dist/bench's caches: no cold build
    .venv/bin/python bench/run.py --scale 1,3  # only these cluster sizes
    .venv/bin/python bench/run.py --rack-only  # only the protocol at rack scale (no VM, a minute)

It works in dist/bench/ with its own cache and doit state, so a cold build is
really cold and the user's own dist/ is not touched (it needs the test
cluster's ports: stop your own cluster first). Results: a table on stdout,
dist/bench/bench.json, dist/bench/scale.png (time to `srun -N N` and host
memory per node, against N), and under dist/bench/boot/<N>/ each node's
`systemd-analyze` critical chain and blame: where its boot went.

The rack figures run 8, 32 and 64 real node-agents, each in its own network namespace
(test/rack.py): the time from start until every agent lists every other as live and all
follow one controller, and the bytes each agent sends on its LAN link a second once they
agree (announcements; their size grows with the membership the controller lists).
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
from test import rack  # noqa: E402

BENCH = ROOT / "dist" / "bench"
AGENT_SOURCE = ROOT / "node" / "clusteros_node" / "status.py"
SCALE = (1, 3, 5, 8)
RACK = (8, 32, 64)
RACK_SAMPLE_S = 30.0

# What the original ClusterOS (Packer, hand-written scripts) took, from its README.
ORIGINAL = {"cold_build_s": "10-20 min", "one_file_rebuild_s": "5-10 min", "boot_to_ssh_s": "30-60 s",
            "cluster_ready_s": "2-3 min", "qcow2_mb": "5 GB image", "cluster_disk_mb": "15 GB for 3 nodes"}
LABELS = {
    "cold_build_s": "cold image build (empty caches), s",
    "noop_rebuild_s": "no-op `doit image`, s",
    "one_file_rebuild_s": "one-file rebuild (node-agent source), s",
    "boot_to_ssh_s": "one node: launch to SSH, s",
    "cluster_ready_s": "3 nodes: launch to `srun -N3` success, s",
    "mpi_ready_s": "3 nodes: launch to an MPI job (3 ranks, 3 hosts) success, s",
    "rss_per_node_mb": "host memory per node (QEMU RSS, 3 nodes, idle 60 s after the last job), MB",
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
    mpi = None
    if count == 3:
        def mpi_ok() -> bool:
            out = first.execute(f"srun -N3 -n3 python3 -c '{MPI_JOB}'", timeout=300)
            return out.status == 0 and out.stdout.split() == ["3"] * 3
        until(mpi_ok, 900, every=3)
        mpi = round(time.monotonic() - started, 1)
    done = time.monotonic()
    save_boot_analysis(spec, count)
    # A running node's memory, not a job's: what the host holds once the cluster has sat idle a
    # while after the last job (the agents' reclaim of cold cache runs every 30 s).
    time.sleep(max(0.0, done + SETTLE_BEFORE_RSS - time.monotonic()))
    rss = [r for r in (cluster.machine(n).rss_mb() for n in layout(spec, count)) if r is not None]
    disk = mb(sum(p.stat().st_blocks * 512 for p in (BENCH / "vm").rglob("overlay.qcow2")))
    return {"nodes": count, "ssh_s": round(to_ssh, 1), "srun_s": round(ready, 1), "mpi_s": mpi,
            "rss_mb_per_node": round(sum(rss) / len(rss), 1), "overlay_mb": disk}


SETTLE_BEFORE_RSS = 60.0
MPI_JOB = "from mpi4py import MPI; print(MPI.COMM_WORLD.allreduce(1))"


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


def measure_rack(sizes: list[int]) -> list[dict]:
    rows = []
    for size in sizes:
        say(f"rack: {size} node-agents in network namespaces")
        started = rack.start(size, BENCH / "rack" / str(size))
        try:
            converge = rack.until_converged(started, timeout=300)
            before = started.sent_bytes()
            time.sleep(RACK_SAMPLE_S)
            after = started.sent_bytes()
            per_node = sum(b - a for a, b in zip(before, after)) / size / RACK_SAMPLE_S
            rows.append({"agents": size, "converge_s": round(converge, 1), "bytes_per_node_s": round(per_node),
                         "agents_running": started.running()})
            say(f"rack: {size} agreed in {converge:.1f} s; {per_node:.0f} bytes per node a second")
        finally:
            rack.stop(size, started)
    return rows


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
        results.update(cluster_ready_s=by_size[3]["srun_s"], mpi_ready_s=by_size[3]["mpi_s"],
                       rss_per_node_mb=by_size[3]["rss_mb_per_node"],
                       cluster_disk_mb=by_size[3]["overlay_mb"])
    return results


def rack_table(rows: list[dict]) -> list[str]:
    lines = ["", f"{'agents':>6}  {'to agree, s':>11}  {'bytes per node a second':>23}"]
    return lines + [f"{r['agents']:>6}  {r['converge_s']:>11}  {r['bytes_per_node_s']:>23}" for r in rows]


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
    right.set_ylim(0, max(r["rss_mb_per_node"] for r in scale) * 1.6)
    left.set_ylim(0, max(r["srun_s"] for r in scale) * 1.15)
    left.set_xticks(sizes)
    figure.legend(loc="lower right", bbox_to_anchor=(0.88, 0.15))
    left.set_title("ClusterOS test cluster on one host (TCG)" if accel.choose("auto").name == "tcg"
                   else "ClusterOS test cluster on one host")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", action="store_true", help="keep dist/bench's caches: no cold build")
    parser.add_argument("--scale", default=",".join(map(str, SCALE)), help="cluster sizes (default: %(default)s)")
    parser.add_argument("--rack", default=",".join(map(str, RACK)), help="rack sizes (default: %(default)s)")
    parser.add_argument("--rack-only", action="store_true", help="only the rack figures (kept beside the last run's)")
    args = parser.parse_args()
    racks = [int(n) for n in args.rack.split(",") if n]
    if args.rack_only:
        BENCH.mkdir(parents=True, exist_ok=True)
        saved = json.loads((BENCH / "bench.json").read_text()) if (BENCH / "bench.json").exists() else {}
        saved["rack"] = measure_rack(racks)
        (BENCH / "bench.json").write_text(json.dumps(saved, indent=2))
        print("\n".join(rack_table(saved["rack"])[1:]))
        return 0
    spec = load_spec(ROOT / "cluster.yaml")
    os.environ.update(CLUSTEROS_DIST=str(BENCH), CLUSTEROS_CACHE_DIR=str(BENCH / "cache"))
    host = machine()
    results = measure_build(args.warm, spec["cluster"]["name"])
    scale = measure_scale(spec, [int(n) for n in args.scale.split(",")])
    results = headline(results, scale)
    racked = measure_rack(racks)
    (BENCH / "bench.json").write_text(json.dumps({"machine": host, "results": results, "scale": scale,
                                                  "rack": racked}, indent=2))
    plot(scale, BENCH / "scale.png")
    print(table(results, scale, host) + "\n".join(rack_table(racked)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
