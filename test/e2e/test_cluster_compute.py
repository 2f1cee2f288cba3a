"""SLURM a user can compute on, on the running 3-node cluster (booted once, for test_cluster too).

Nobody prepares anything: as the admin user on node1, an MPI job of 3 ranks on 3 hosts,
a step over its memory killed, `srun -c` held to its CPUs, a batch job whose output node3
reads from the shared home, that job in sacct with its peak memory, and the storage
node rebooted under a running job: the job, the queue and the shared home come back.
"""

import re

import pytest

from .conftest import agent_status

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def wifi_image_meanwhile():
    """The next module's image (test_cluster_over_wifi.py), built while these tests wait on SLURM."""
    from .test_cluster_over_wifi import variant_image_building
    variant_image_building()


MPI_RING = (
    "from mpi4py import MPI; import socket; c = MPI.COMM_WORLD; r, n = c.Get_rank(), c.Get_size(); "
    "got = c.sendrecv(r, dest=(r + 1) % n, source=(r - 1) % n); "
    "print(r, n, socket.gethostname(), got, c.allreduce(r))")


def test_an_mpi_job_runs_three_ranks_on_three_hosts_that_exchange_messages(running):
    out = running["node1"].wait_until_succeeds(f"srun -N3 -n3 python3 -c '{MPI_RING}'", timeout=240)
    ranks = sorted(line.split() for line in out.splitlines() if line.strip())
    assert [r[0] for r in ranks] == ["0", "1", "2"] and {r[1] for r in ranks} == {"3"}, out
    assert sorted(r[2] for r in ranks) == ["node1", "node2", "node3"], "one rank per host"
    assert [r[3] for r in ranks] == ["2", "0", "1"], "each rank got its left neighbour's number"
    assert {r[4] for r in ranks} == {"3"}, "allreduce saw every rank"


def test_a_step_over_its_memory_is_killed_as_out_of_memory(running):
    hog = "srun --mem=64 python3 -c 'x = bytearray(400 * 2**20); print(len(x))'"
    result = running["node1"].execute(hog, timeout=240)
    assert result.status != 0, f"a 400 MiB step ran within --mem=64: {result.stdout}"
    assert re.search(r"oom-kill|Out Of Memory", result.stderr), result.stderr


def test_the_memory_a_job_touched_goes_back_to_the_host_when_it_ends(running):
    """Free page reporting and the agent's reclaim of cold cache (clusteros_node.hostmemory): without
    them a node's QEMU keeps every page its guest ever touched, the job's own memory and the page
    cache of the file it wrote and never read again."""
    node3 = running["node3"]
    machine = node3.machine
    before = machine.rss_mb()
    running["node1"].succeed(
        "sbatch -w node3 --wrap \"dd if=/dev/zero of=/var/tmp/job-output bs=1M count=150 conv=fsync status=none"
        " && python3 -c 'import time; x = bytearray(300 * 2**20); x[::4096] = bytes(len(x) // 4096); time.sleep(4)'\"")

    def grew() -> float:   # the 300 MB at least: the agent may reclaim the file's cache before the peak
        now = machine.rss_mb()
        assert now > before + 250, f"node3's QEMU holds {now} MB (before the job: {before} MB)"
        return now
    peak = running.retry(grew, 120, every=0.5)

    def given_back() -> None:
        now = machine.rss_mb()
        assert now < before + 60, f"node3's QEMU still holds {now} MB (before: {before} MB, peak: {peak} MB)"
    running.retry(given_back, 90, every=2)
    assert node3.succeed("stat -c %s /var/tmp/job-output").strip() == str(150 << 20), "the output is still there"
    node3.succeed("rm /var/tmp/job-output")


def test_a_step_runs_in_its_own_cgroup_with_exactly_the_cpus_it_asked_for(running):
    """On every node, one CPU and all of them. The shipped nodes have one CPU; a step smaller than
    its node is checked on the 2-CPU machine test_cluster_trust.py netboots."""
    node1 = running["node1"]
    cgroup = node1.succeed("srun -N1 cat /proc/self/cgroup")
    assert re.search(r"slurmstepd\.scope/job_\d+/step_0", cgroup), cgroup
    for node in running:
        cpus = int(node.succeed("nproc"))
        for wanted in sorted({1, cpus}):
            seen = node1.succeed(f"srun -w {node.name} -c {wanted} grep Cpus_allowed_list /proc/self/status")
            allowed = cpu_count(seen.split(":", 1)[1].strip())
            assert allowed == wanted, f"{node.name}: srun -c {wanted} may use {allowed} CPUs ({seen.strip()})"


def cpu_count(cpu_list: str) -> int:
    total = 0
    for part in cpu_list.split(","):
        first, _, last = part.partition("-")
        total += int(last or first) - int(first) + 1
    return total


def _wait_done(node, job: str, timeout: float = 300) -> str:
    def finished() -> str:
        state = node.succeed(f"sacct -n -X -P -j {job} -o State").strip()
        assert state and state not in ("PENDING", "RUNNING", "COMPLETING"), f"job {job} is {state or 'not in sacct yet'}"
        return state
    return node.retry(finished, timeout)


def test_a_batch_job_from_node1_writes_to_the_shared_home_that_node3_reads_and_sacct_keeps(running):
    node1, node3 = running["node1"], running["node3"]
    script = "srun python3 -c 'import time; x = bytearray(60 * 2**20); time.sleep(8); print(len(x))'; srun hostname"
    job = node1.succeed(f'cd ~ && sbatch --parsable -N2 -o out-%j.txt --wrap "{script}"').strip()
    assert _wait_done(node1, job) == "COMPLETED"
    out = node3.wait_until_succeeds(f"cat ~/out-{job}.txt", timeout=30).split()
    assert out.count(str(60 * 2**20)) == 2 and len({name for name in out if name.startswith("node")}) == 2, out
    rows = [line.split("|") for line in node1.succeed(f"sacct -n -P -j {job} -o JobID,State,Elapsed,MaxRSS").split()]
    assert rows[0][1] == "COMPLETED" and re.fullmatch(r"\d\d:\d\d:\d\d", rows[0][2]), rows
    peak = max(_kib(row[3]) for row in rows)
    assert peak >= 50 * 1024, f"peak memory of a 60 MiB step: {rows}"


def _kib(value: str) -> float:
    units = {"": 1 / 1024, "K": 1, "M": 1024, "G": 1024**2}
    match = re.fullmatch(r"([\d.]+)([KMG]?)", value)
    return float(match.group(1)) * units[match.group(2)] if match else 0.0


def test_the_storage_node_reboots_under_jobs_and_the_queue_and_the_home_come_back(running):
    """node1 is the storage node (the spec's default) and, in a cluster that booted together,
    the controller: its reboot is the controller's reboot, too (README, "Jobs and a controller
    that goes")."""
    node1, node2, node3 = running["node1"], running["node2"], running["node3"]
    # Long enough to be running when node1 goes down; it may end before node1 is back (a reboot
    # is about a minute here): then node3's slurmd hands its end to the controller once it is.
    long = node2.succeed('cd /tmp && sbatch --parsable -w node3 -o /dev/null --wrap "sleep 40"').strip()
    queued = node2.succeed('cd /tmp && sbatch --parsable -w node3 -o /dev/null --wrap "true"').strip()
    node2.wait_until_succeeds(f"squeue -h -j {long} -o %T | grep -qx RUNNING", timeout=60)
    node1.reboot(timeout=240)
    running.retry(lambda: _storage_serving(node1), timeout=120)
    # Within the spec's controller_grace the role stays; had the reboot outlasted it, node2 would lead
    # with an empty queue, and the waits below would time out on jobs nobody has.
    assert agent_status(node2)["controller"] == "node1", \
        f"the controller moved during node1's reboot (its grace: {running.spec['cluster']['controller_grace']} s)"
    assert _wait_done(node2, long, timeout=400) == "COMPLETED", "the running job ran on"
    assert _wait_done(node2, queued, timeout=120) == "COMPLETED", "the queued job ran after it"
    node2.wait_until_succeeds("srun -w node2 sh -c 'echo back > ~/after-reboot.txt'", timeout=180)
    assert node3.wait_until_succeeds("cat ~/after-reboot.txt", timeout=60).strip() == "back"


def _storage_serving(node) -> None:
    storage = agent_status(node)["storage"]
    assert storage.get("home", {}).get("nfs-server") == "active", storage
    assert storage.get("accounting", {}).get("slurmdbd") == "active", storage
