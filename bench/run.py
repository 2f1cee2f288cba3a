#!/usr/bin/env python3
"""Measure ClusterOS the way a user meets it, and print the figures beside the targets.

    .venv/bin/python bench/run.py            # everything (cold build included), ~10 min on 2 cores
    .venv/bin/python bench/run.py --warm     # reuse the rootfs cache: skips the cold build

It works in dist/bench/ with its own cache and doit state, so a cold build is
really cold and the user's own dist/ and cluster are not touched (but it needs
the test cluster's ports: stop your own cluster first). Results: a table on
stdout and dist/bench/bench.json.
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

# What the original ClusterOS (Packer, hand-written scripts) took, from its README.
TARGETS = {
    "cold_build_s": "10-20 min",
    "noop_rebuild_s": "-",
    "one_file_rebuild_s": "5-10 min",
    "boot_to_ssh_s": "30-60 s",
    "cluster_ready_s": "2-3 min",
    "qcow2_mb": "5 GB image",
    "raw_allocated_mb": "",
    "raw_gz_mb": "",
    "cluster_disk_mb": "15 GB for 3 nodes",
    "build_peak_rss_mb": "",
}
LABELS = {
    "cold_build_s": "cold image build (empty caches), s",
    "noop_rebuild_s": "no-op `doit image`, s",
    "one_file_rebuild_s": "one-file rebuild (node-agent source), s",
    "boot_to_ssh_s": "one node: launch to SSH, s",
    "cluster_ready_s": "3 nodes: launch to `srun -N3` success, s",
    "qcow2_mb": "image, qcow2, MB",
    "raw_allocated_mb": "image, raw allocated, MB",
    "raw_gz_mb": "image, raw.gz, MB",
    "cluster_disk_mb": "running 3-node cluster beyond the image, MB",
    "build_peak_rss_mb": "peak memory of a build process, MB",
}


def env() -> dict:
    e = dict(os.environ)
    e.update(CLUSTEROS_DIST=str(BENCH), CLUSTEROS_CACHE_DIR=str(BENCH / "cache"))
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


def mb(n: float) -> float:
    return round(n / 1e6, 1)


def until(check, timeout: float, every: float = 2.0) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise SystemExit(f"bench: gave up after {timeout:.0f}s")
        time.sleep(every)
    return time.monotonic() - started


def measure(warm: bool) -> dict:
    spec = load_spec(ROOT / "cluster.yaml")
    name = spec["cluster"]["name"]
    os.environ.update(CLUSTEROS_DIST=str(BENCH), CLUSTEROS_CACHE_DIR=str(BENCH / "cache"))
    results: dict[str, float | None] = {}
    if not warm:
        shutil.rmtree(BENCH, ignore_errors=True)
    BENCH.mkdir(parents=True, exist_ok=True)
    print("bench: cold build (rootfs, image, raw, gz) ...", file=sys.stderr)
    results["cold_build_s"] = None if warm and (BENCH / f"{name}.raw.gz").exists() else round(doit(), 1)
    doit()   # make sure everything exists when --warm skipped the cold build
    print("bench: no-op rebuild ...", file=sys.stderr)
    results["noop_rebuild_s"] = round(min(doit("image") for _ in range(3)), 2)

    print("bench: one-file rebuild ...", file=sys.stderr)
    original = AGENT_SOURCE.read_text()
    try:
        AGENT_SOURCE.write_text(original + f"\n# bench {time.time()}\n")
        results["one_file_rebuild_s"] = round(doit("image"), 1)
    finally:
        AGENT_SOURCE.write_text(original)
    doit("image")   # back to the committed sources
    results["build_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)

    qcow2, raw, gz = (BENCH / f"{name}{s}" for s in (".qcow2", ".raw", ".raw.gz"))
    results["qcow2_mb"] = mb(qcow2.stat().st_size)
    results["raw_allocated_mb"] = mb(raw.stat().st_blocks * 512)
    results["raw_gz_mb"] = mb(gz.stat().st_size)

    print("bench: one node, launch to SSH ...", file=sys.stderr)
    doit("vm_clean")
    results["boot_to_ssh_s"] = round(doit("test_vm", "--nodes", "1"), 1)
    doit("vm_clean")

    print("bench: three nodes, launch to srun -N3 ...", file=sys.stderr)
    started = time.monotonic()
    doit("test_vm")
    first = cluster.node_handle(spec, layout(spec, 3)[0], scale=1.0)

    def srun_ok() -> bool:
        out = first.execute("srun -N3 hostname", timeout=60)
        return out.status == 0 and len(set(out.stdout.split())) == 3
    until(srun_ok, 900, every=5)
    results["cluster_ready_s"] = round(time.monotonic() - started, 1)
    results["cluster_disk_mb"] = mb(sum(p.stat().st_blocks * 512 for p in (BENCH / "vm").rglob("overlay.qcow2")))
    doit("vm_clean")
    return results


def machine() -> dict:
    acc = accel.choose("auto")
    return {"cores": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            "accel": acc.name, "accel_reason": acc.reason, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def table(results: dict, host: dict) -> str:
    lines = [f"ClusterOS bench on {host['cores']} cores, {host['memory_gb']} GiB, {host['accel'].upper()} "
             f"({host['date']})", ""]
    width = max(len(v) for v in LABELS.values())
    lines.append(f"{'measure':<{width}}  {'ClusterOS':>10}  original ClusterOS")
    lines.append(f"{'-' * width}  {'-' * 10}  {'-' * 18}")
    for key, label in LABELS.items():
        value = results.get(key)
        shown = "skipped" if value is None else f"{value:g}"
        lines.append(f"{label:<{width}}  {shown:>10}  {TARGETS[key]}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", action="store_true", help="keep dist/bench's cache: no cold build")
    args = parser.parse_args()
    host = machine()
    results = measure(args.warm)
    (BENCH / "bench.json").write_text(json.dumps({"machine": host, "results": results}, indent=2) + "\n")
    print(table(results, host))
    return 0


if __name__ == "__main__":
    sys.exit(main())
