"""End-to-end fixtures: real doit, real mmdebstrap, real QEMU.

These tests build what a user builds (`doit image raw gz` on the shipped
cluster.yaml), in dist/e2e/ rather than the user's dist/, so that they never
touch a cluster the user is running (a taken port is a clear error instead).
They share the user's rootfs cache: a warm cache makes them fast.

Two changes to the shipped spec. K3s is enabled, from a release mirror on
127.0.0.1 that stands in for GitHub (unreachable here) and publishes
test/e2e/k3s_standin.py as the release's k3s binary, with its sha256sum file.
So the default K3s path runs for real: the release is fetched and checked, the
image carries it, and the node-agent starts it in each node's role. And network.wifi is
set (its passphrase in dist/e2e/wifi.psk): every credential carries the network's key, and
test_cluster_over_wifi.py has a node join the cluster over it.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

import pytest

from clusteros import atomic
from clusteros_node import status as status_mod

from ..local_http import serve_directory

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist" / "e2e"


K3S_VERSION = "v1.31.4+k3s1"
MIRROR_PORT = 47180   # fixed, so that the spec (and so the image) is the same from one run to the next


STANDIN = ROOT / "test" / "e2e" / "k3s_standin.py"
# The URL names the stand-in's hash: a real release never changes under its version, so the k3s
# task rightly keys its download on the spec alone; a changed stand-in is a new URL, and so a new
# download and a new image.
STANDIN_SHA256 = hashlib.sha256(STANDIN.read_bytes()).hexdigest()
K3S_RELEASE_URL = f"http://127.0.0.1:{MIRROR_PORT}/{STANDIN_SHA256[:12]}"


@contextlib.contextmanager
def k3s_mirror():
    """The K3s release page, on 127.0.0.1:MIRROR_PORT, with the stand-in as its k3s binary.

    Served while build() makes the inputs every dist shares: the k3s task fetches the release
    once into the download cache, where every later build in any dist finds it."""
    release = DIST / "k3s-release" / STANDIN_SHA256[:12] / K3S_VERSION
    release.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(STANDIN, release / "k3s")
    (release / "sha256sum-amd64.txt").write_text(f"{STANDIN_SHA256}  k3s\n")
    with contextlib.ExitStack() as serving:
        try:
            serving.enter_context(serve_directory(DIST / "k3s-release", port=MIRROR_PORT))
        except OSError as error:
            pytest.fail(f"127.0.0.1:{MIRROR_PORT} is taken ({error}): the e2e spec's K3s mirror is served there "
                        f"(`ss -ltnp 'sport = :{MIRROR_PORT}'` names what holds it)")
        yield


WIFI = {"ssid": "clusteros-e2e", "country": "DE"}   # DE, not the default: the test sees it was set
WIFI_PSK_FILE = "wifi.psk"                          # beside the e2e spec: a relative path, as a user's


def e2e_spec_text(mirror: str) -> str:
    """The shipped cluster.yaml with K3s enabled from `mirror`, and network.wifi (a node joins over it)."""
    text = (ROOT / "cluster.yaml").read_text()
    enabled, count = re.subn(r"(\n  k3s:\n(?:    #.*\n)*)    enabled: false\n",
                             rf"\1    enabled: true\n    release_url: {mirror}\n", text)
    assert count == 1, "cluster.yaml's services.k3s block changed: update e2e_spec_text"
    wifi = f"  wifi:\n    ssid: {WIFI['ssid']}\n    psk_file: {WIFI_PSK_FILE}\n    country: {WIFI['country']}\n"
    with_wifi, count = re.subn(r"\nnetwork:\n", lambda found: found.group(0) + wifi, enabled)
    assert count == 1, "cluster.yaml's network block changed: update e2e_spec_text"
    return with_wifi


def relocatable(spec_text: str) -> str:
    """The e2e spec's text for a copy kept elsewhere: its WiFi key file named absolutely."""
    relative = f"    psk_file: {WIFI_PSK_FILE}\n"
    assert relative in spec_text
    return spec_text.replace(relative, f"    psk_file: {DIST.resolve() / WIFI_PSK_FILE}\n")


def ensure_wifi_passphrase(folder: Path) -> Path:
    """The e2e network's passphrase (0600), made once: a secret like any other, which no image may hold.

    Written whole under another name and linked into place: the other test worker, making it at
    the same moment, either links first or finds the whole file."""
    path = folder / WIFI_PSK_FILE
    if path.exists():
        return path
    fd, part = tempfile.mkstemp(prefix=f".{WIFI_PSK_FILE}.", dir=folder)   # 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(part, path)
    finally:
        os.unlink(part)
    return path


@pytest.fixture(scope="session", autouse=True)
def e2e_dist():
    """Every e2e test, and every doit it starts, works in dist/e2e/ on the e2e spec.

    From the checkout, with dist/e2e given as a relative path: as a user's default dist/ is.
    Each test worker writes the same spec (atomically, and only if it changed).
    """
    DIST.mkdir(parents=True, exist_ok=True)
    spec_file = DIST / "cluster.yaml"
    text = e2e_spec_text(K3S_RELEASE_URL)
    if not spec_file.exists() or spec_file.read_text() != text:
        atomic.write_text(spec_file, text)
    ensure_wifi_passphrase(DIST)
    patch = pytest.MonkeyPatch()
    patch.chdir(ROOT)
    patch.setenv("CLUSTEROS_DIST", str(DIST.relative_to(ROOT)))
    patch.setenv("CLUSTEROS_SPEC", str(spec_file))
    # Its own secrets, owner key and test key: the tests rotate the credential, never the user's.
    patch.setenv("CLUSTEROS_STATE_DIR", str(DIST.relative_to(ROOT) / "state"))
    patch.delenv("CLUSTEROS_DOIT_DB", raising=False)
    yield DIST
    patch.undo()


# -- doit, from two test workers at once ------------------------------------------------------------
#
# The suite runs in two pytest-xdist workers (pyproject.toml): the 3-node cluster's modules in one,
# the other e2e modules and the unit tests in the other. Each doit below holds its dist's lock (one
# doit at a time on a dist's state database and outputs) and a shared hold on the checkout's (a test
# that edits a source file takes it alone: every doit reads the sources). What every dist shares,
# the root file system and the K3s release in the cache and the keys in the state folder, is made
# under one lock by build(), so that two workers never make it at once.

SOURCES_LOCK = DIST / ".sources.lock"
INPUTS_LOCK = DIST / ".inputs.lock"
_editing_sources = False


@contextlib.contextmanager
def flocked(path: Path, operation: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, operation)
        yield   # closing the file lets go


@contextlib.contextmanager
def editing_sources():
    """While a test changes a file of the checkout: no other doit runs (its own need not wait)."""
    global _editing_sources
    with flocked(SOURCES_LOCK, fcntl.LOCK_EX):
        _editing_sources = True
        try:
            yield
        finally:
            _editing_sources = False


def doit(*args: str, timeout: float = 1800, check: bool = True, env: dict | None = None,
         behind: bool = False) -> subprocess.CompletedProcess:
    """doit as a user runs it, on the e2e spec unless `env` names another; `behind`: behind the
    cluster's worker for the CPU (see `behind_the_cluster`)."""
    env = dict(os.environ) | (env or {})
    with contextlib.ExitStack() as held:
        if not _editing_sources:
            held.enter_context(flocked(SOURCES_LOCK, fcntl.LOCK_SH))
        held.enter_context(flocked(ROOT / env.get("CLUSTEROS_DIST", "dist") / ".e2e-doit.lock", fcntl.LOCK_EX))
        out = run_whole([sys.executable, "-m", "doit", *args], env, timeout, behind)
    # Shown by pytest on failure: the whole story of the run.
    print(f"$ doit {' '.join(args)}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}")
    if check:
        assert out.returncode == 0, f"doit {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def run_whole(argv: list[str], env: dict, timeout: float, behind: bool = False) -> subprocess.CompletedProcess:
    """Run `argv` from the checkout in a process group of its own. Past `timeout` the whole group is
    killed (mmdebstrap, pigz... with it), so that nothing of it writes on once its locks are let go;
    on Ctrl-C the group gets the SIGINT the terminal no longer sends it."""
    with subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        if behind:
            behind_the_cluster(process.pid)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except (subprocess.TimeoutExpired, KeyboardInterrupt) as stopped:
            os.killpg(process.pid, signal.SIGINT if isinstance(stopped, KeyboardInterrupt) else signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def build(*tasks: str, env: dict | None = None, behind: bool = False) -> subprocess.CompletedProcess:
    """doit `tasks` in a dist, once the inputs every dist shares are there (made by one worker)."""
    with flocked(INPUTS_LOCK, fcntl.LOCK_EX), k3s_mirror():
        doit("rootfs", "keys", "k3s", env=env)
    return doit(*tasks, env=env, behind=behind)


_background: dict[str, Future] = {}


def in_background(name: str, work: Callable[[], T]) -> Future:
    """`work()` in a thread of its own, started the first time `name` is asked for: a module starts
    what the next one needs while its own tests mostly wait, and the next takes the result (or
    starts the work itself, when it runs without the first)."""
    if name not in _background:
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        _background[name] = pool.submit(work)
        pool.shutdown(wait=False)   # its thread ends with the work
    return _background[name]


# The 3-node cluster's worker is the suite's long pole, and both workers' VMs want the two cores
# at once: the installers' machines and build, in the other worker, yield to it (Packer's, which run
# later, while the cluster's worker is on its last tests, do not). Each daemonized
# QEMU and each doit (a session of its own) is an autogroup of its own, which the scheduler shares
# the CPU between; `nice` alone only ranks processes within their group. Nice 10: about a tenth
# of the CPU when the cluster's side wants all of it, all of it when it waits.
BEHIND_NICE = 10


def behind_the_cluster(pid: int) -> None:
    """Lower the CPU share of `pid`'s autogroup (its session); nothing where the kernel has none."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{BEHIND_NICE}\n")
    except OSError:
        pass


@pytest.fixture(scope="session")
def image(e2e_dist) -> Path:
    build("image", "raw", "gz")
    return DIST / "democluster.qcow2"


@pytest.fixture(scope="session")
def spec(e2e_dist):
    from clusteros.spec import load_spec
    return load_spec(os.environ["CLUSTEROS_SPEC"])


@pytest.fixture(scope="session")
def running(image, spec):
    """The 3-node cluster, booted once for every module that checks it (test_cluster*, in that order);
    the last of them stops and cleans it, and this cleans up whatever is left."""
    from clusteros.vm import cluster as lifecycle
    from clusteros.vm.checks import ClusterHandle
    doit("test_vm", timeout=1500)
    yield ClusterHandle(spec, lifecycle.running_nodes(spec))
    doit("vm_clean", check=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed check on the cluster keeps every node's journal as it was then: a rare failure on a
    busy CI is diagnosed from what the nodes logged, not from a rerun that passes."""
    report = yield
    cluster = getattr(item, "funcargs", {}).get("running")
    if report.failed and cluster is not None:
        report.sections.append(("the nodes' journals", "\n".join(keep_journals(cluster, item.name))))
    return report


def keep_journals(cluster, test_name: str) -> list[str]:
    """Each node's journal of this boot and the console of every machine in dist/e2e/vm (a stranger's
    too) in dist/e2e/journals/TEST/ (vm_clean removes the machines' own folders); says where, or why not."""
    said, folder = [], DIST / "journals" / re.sub(r"[^\w.-]", "_", test_name)
    folder.mkdir(parents=True, exist_ok=True)
    journals = on_each(cluster, lambda node: node.execute("sudo journalctl -b --no-pager -o short-monotonic", timeout=60))
    for node, result in zip(cluster, journals):
        path = folder / f"{node.name}.log"
        if result.status != 0:
            said.append(f"{node.name}: no journal ({result.stderr.strip()[-200:]})")
            continue
        atomic.write_text(path, result.stdout)
        said.append(f"{node.name}: {path}")
    for console in sorted((DIST / "vm").glob("*/serial.log")):   # the test's own machines too (a stranger)
        path = folder / f"{console.parent.name}.console"
        try:   # in a report hook: an error here would end the whole session
            shutil.copyfile(console, path)
        except OSError as why:
            said.append(f"{console.parent.name}: no console ({why})")
            continue
        said.append(f"{console.parent.name}'s console: {path}")
    return said


def pids() -> dict[str, int]:
    from clusteros.vm import cluster as lifecycle
    from clusteros.vm.layout import VMNode
    state = lifecycle.load_state()
    return {n["name"]: lifecycle.machine(VMNode(**n)).pid() for n in state["nodes"]}


def agent_status(node) -> dict:
    """The agent's status file, which `clusteros-node status --json` prints (other tests run that
    command itself). The tests poll it hundreds of times, most while the cluster forms: `cat` costs
    an emulated node 0.15 CPU-seconds, a Python start 0.6, taken from the agents being waited for."""
    text = node.succeed(f"cat {status_mod.STATUS_FILE} 2>/dev/null || true")
    assert text.strip(), f"{node.name}: no {status_mod.STATUS_FILE} yet: is node-agent.service running?"   # retried
    return json.loads(text)


def live_member(status: dict, name: str) -> None:
    """`name` is a live member in this agent status (for retry: an AssertionError until it is)."""
    assert name in [m["name"] for m in status["members"] if m["live"]], status["members"]


def on_each(running, work):
    """`work(node)` on every node at once (each is an SSH round trip and a Python start on the node)."""
    with ThreadPoolExecutor(max_workers=len(running)) as pool:
        return list(pool.map(work, running))


def statuses(running) -> dict[str, dict]:
    """Every node's agent status, by node name (asked of all at once)."""
    return {node.name: status for node, status in zip(running, on_each(running, agent_status))}


def forget_everywhere(running, name: str) -> None:
    """A machine gone for good: every member that knows it forgets it, and then none lists it."""
    for forget in on_each(running, lambda node: node.execute(f"sudo clusteros-node forget {name}")):
        assert forget.status == 0 or "not a member this node knows" in forget.stderr, forget

    def forgotten() -> None:
        for node, status in zip(running, on_each(running, agent_status)):
            assert name not in [m["name"] for m in status["members"]], f"{node.name} still lists {name}"
            assert name not in [p["name"] for p in status["pending"]], f"{node.name} still shows {name} asking"
    running.retry(forgotten, 30)


def untouched(disk: Path) -> bool:
    """Not one byte of the disk was written: every block of the qcow2 is still unallocated."""
    extents = json.loads(subprocess.run(["qemu-img", "map", "--output=json", str(disk)], check=True,
                                        capture_output=True, text=True).stdout)
    return all(not extent["data"] for extent in extents)
