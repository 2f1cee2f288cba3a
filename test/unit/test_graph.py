"""The task graph's up-to-date behaviour, with the real task declarations.

doit runs in-process against a temp dir. The slow stage functions (mmdebstrap,
disk assembly, conversions) are replaced by fakes that write their targets and
record the call; every file_dep, target and config_changed under test is real.
"""

import shutil
import time
from pathlib import Path

import pytest
from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain

import tasks
from tasks.filecheck import StampOrContentChecker
from clusteros import convert, image, paths, rootfs
from clusteros.installer import InstallerError, media, payload, pxe

from ..local_http import serve_directory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A throwaway project: its own spec, dist, cache, state and a copy of images/."""
    images = tmp_path / "images"
    shutil.copytree(ROOT / "images", images)
    monkeypatch.setattr(paths, "IMAGES_DIR", images)
    spec = tmp_path / "cluster.yaml"
    spec.write_text((ROOT / "cluster.yaml").read_text())
    for var, sub in (("CLUSTEROS_DIST", "dist"), ("CLUSTEROS_CACHE_DIR", "cache"), ("CLUSTEROS_STATE_DIR", "state")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("CLUSTEROS_SPEC", str(spec))
    monkeypatch.chdir(tmp_path)

    calls: list[str] = []

    def fake_rootfs(view, target):
        calls.append("rootfs")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f"{view!r} {time.time_ns()}")

    def fake_image(inputs, qcow2, manifest):
        calls.append("image")
        qcow2.write_text(f"qcow2 {time.time_ns()}")   # a real rebuild changes the bytes
        manifest.write_text("{}")
        for boot_file in image.vm_boot_files(qcow2):
            boot_file.write_text("kernel or initrd")

    def fake_raw(qcow2, raw):
        calls.append("raw")
        raw.write_text(f"raw {time.time_ns()}")

    def fake_gz(raw, gz):
        calls.append("gz")
        gz.write_text("gz")
        gz.with_name(gz.name + ".sha256").write_text("sum")

    def fake_payload(raw, data, description):
        calls.append("payload")
        data.write_text(f"data {time.time_ns()}")
        description.write_text("{}")

    def fake_installer(name):
        def build(**kwargs):
            calls.append(name)
            out = {"iso": kwargs.get("iso"), "usb": kwargs.get("usb_gz")}.get(name)
            if name == "pxe":   # a directory
                out = kwargs["pxe_dir"] / "boot.ipxe"
                out.parent.mkdir(parents=True, exist_ok=True)
                (out.parent / "initrd.img").write_text("initrd")
            out.write_text(f"{name} {time.time_ns()}")
            if name == "usb":
                kwargs["usb_sha"].write_text(f"{'0' * 64}  x-usb.img  1\n")
        return build

    monkeypatch.setattr(payload, "build_payload", fake_payload)
    for module, name in ((media, "iso"), (media, "usb"), (pxe, "pxe")):
        monkeypatch.setattr(module, f"build_{name}", fake_installer(name))
    monkeypatch.setattr(rootfs, "build_rootfs", fake_rootfs)
    monkeypatch.setattr(image, "build_image", fake_image)
    monkeypatch.setattr(convert, "to_raw", fake_raw)
    monkeypatch.setattr(convert, "compress", fake_gz)

    class Project:
        root = tmp_path
        ran = calls   # the stages that ran, in order (the fakes above append to it)

        def doit(self, *args: str) -> list[str]:
            calls.clear()
            namespace = dict(tasks.TASKS)
            namespace["DOIT_CONFIG"] = {"dep_file": str(paths.doit_db()), "backend": "sqlite3",
                                        "default_tasks": ["image", "raw", "gz"], "verbosity": 0,
                                        "check_file_uptodate": StampOrContentChecker}
            paths.doit_db().parent.mkdir(parents=True, exist_ok=True)
            assert DoitMain(ModuleTaskLoader(namespace)).run(list(args)) == 0
            return list(calls)

        def edit_spec(self, old: str, new: str) -> None:
            text = spec.read_text()
            assert old in text
            spec.write_text(text.replace(old, new))
            bump(spec)

    return Project()


def bump(path: Path) -> None:
    """Make sure doit sees a new mtime even on coarse-timestamp file systems."""
    stamp = time.time() + 2
    import os
    os.utime(path, (stamp, stamp))


def test_first_run_builds_every_layer_then_nothing(project):
    assert project.doit() == ["rootfs", "image", "raw", "gz"]
    assert project.doit() == []
    assert project.doit("image") == []


def test_vm_memory_change_rebuilds_nothing(project):
    project.doit()
    project.edit_spec("memory: 1024", "memory: 2048")
    assert project.doit() == []


def test_overlay_file_change_rebuilds_image_not_rootfs(project):
    project.doit()
    sshd = project.root / "images/common/overlay/etc/ssh/sshd_config.d/10-clusteros.conf"
    sshd.write_text(sshd.read_text() + "# changed\n")
    bump(sshd)
    assert project.doit() == ["image", "raw", "gz"]


def test_new_overlay_file_rebuilds_image(project):
    project.doit()
    extra = project.root / "images/common/overlay/etc/motd"
    extra.write_text("welcome\n")
    assert project.doit() == ["image", "raw", "gz"]


def test_package_list_change_rebuilds_rootfs_and_image(project):
    project.doit()
    project.edit_spec("packages: []", "packages: [htop]")
    assert project.doit() == ["rootfs", "image", "raw", "gz"]


def test_base_package_file_change_rebuilds_rootfs_and_image(project):
    project.doit()
    base = project.root / "images/debian/packages"
    base.write_text(base.read_text() + "htop\n")
    bump(base)
    assert project.doit() == ["rootfs", "image", "raw", "gz"]


def test_timezone_change_rebuilds_image_not_rootfs(project):
    project.doit()
    project.edit_spec("timezone: UTC", "timezone: Europe/Berlin")
    assert project.doit() == ["image", "raw", "gz"]


def test_node_agent_change_rebuilds_node_and_image_not_rootfs(project, monkeypatch):
    node_src = project.root / "node"
    shutil.copytree(ROOT / "node", node_src, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(paths, "NODE_SRC", node_src)
    project.doit()
    source = node_src / "clusteros_node" / "identity.py"
    source.write_text(source.read_text() + "\n# changed\n")
    bump(source)
    assert project.doit() == ["image", "raw", "gz"]
    assert (paths.dist_dir() / "node-agent.pyz").exists()


def test_reverting_the_package_list_reuses_the_cached_rootfs(project):
    project.doit()
    project.edit_spec("packages: []", "packages: [htop]")
    project.doit()
    project.edit_spec("packages: [htop]", "packages: []")
    assert project.doit() == ["image", "raw", "gz"]


def test_state_database_lives_under_dist_by_default(project):
    project.doit()
    assert (paths.dist_dir() / ".doit.db").exists()


def test_state_database_moves_with_its_variable(project, monkeypatch):
    elsewhere = project.root / "ci-cache" / "doit.db"
    monkeypatch.setenv("CLUSTEROS_DOIT_DB", str(elsewhere))
    project.doit()
    assert elsewhere.exists()


def test_k3s_binary_from_a_local_file_is_checked_and_baked_in(project, monkeypatch):
    import hashlib
    binary = project.root / "k3s-local"
    binary.write_bytes(b"#!/bin/sh\necho k3s\n")
    sha = hashlib.sha256(binary.read_bytes()).hexdigest()
    seen = {}
    original = image.build_image

    def recording_image(inputs, qcow2, manifest):
        seen["k3s_binary"] = inputs.k3s_binary
        return original(inputs, qcow2, manifest)
    monkeypatch.setattr(image, "build_image", recording_image)
    project.edit_spec("    enabled: false", f"    file: {binary}\n    sha256: {sha}\n    enabled: true")
    assert project.doit() == ["rootfs", "image", "raw", "gz"]
    assert seen["k3s_binary"].read_bytes() == binary.read_bytes()
    assert project.doit() == []


def test_k3s_release_is_fetched_once_checked_against_its_published_sums(project, monkeypatch):
    """The default K3s source: <release_url>/<version>/k3s, verified by the release's sha256sum file."""
    import hashlib
    requests_seen = []
    for version, body in (("v1.31.4+k3s1", b"k3s one"), ("v1.30.8+k3s1", b"k3s two")):
        folder = project.root / "mirror" / version
        folder.mkdir(parents=True)
        (folder / "k3s").write_bytes(body)
        (folder / "sha256sum-amd64.txt").write_text(f"{hashlib.sha256(body).hexdigest()}  k3s\n")
    seen = {}
    original = image.build_image

    def recording_image(inputs, qcow2, manifest):
        seen["k3s"] = inputs.k3s_binary
        return original(inputs, qcow2, manifest)
    monkeypatch.setattr(image, "build_image", recording_image)
    with serve_directory(project.root / "mirror", requests=requests_seen) as mirror:
        project.edit_spec("    enabled: false", f"    enabled: true\n    release_url: {mirror}")
        assert project.doit() == ["rootfs", "image", "raw", "gz"]
        assert seen["k3s"].read_bytes() == b"k3s one"
        assert sorted(requests_seen) == ["/v1.31.4%2Bk3s1/k3s", "/v1.31.4%2Bk3s1/sha256sum-amd64.txt"]
        assert project.doit() == [] and len(requests_seen) == 2, "a cached release is not fetched again"
        project.edit_spec("    release_url:", "    version: v1.30.8+k3s1\n    release_url:")
        assert project.doit() == ["image", "raw", "gz"]
        assert seen["k3s"].read_bytes() == b"k3s two"


@pytest.fixture
def iso_server(project):
    """An installer ISO on 127.0.0.1 (Ubuntu's cannot be reached from here); /missing.iso answers 404."""
    (project.root / "www").mkdir()
    (project.root / "www" / "noble.iso").write_bytes(b"an installer ISO")
    with serve_directory(project.root / "www") as url:
        yield url


def use_iso_base(project, url: str, sha: str) -> None:
    project.edit_spec("  distro: debian ", "  distro: ubuntu ")
    project.edit_spec("  suite: bookworm\n", "")
    project.edit_spec("  builder: native ", f"  packer: {{base: iso, iso_url: '{url}', iso_sha256: {sha}}}\n  builder: packer ")


def test_packer_iso_base_fetches_the_iso_once_and_needs_no_rootfs(project, iso_server, monkeypatch):
    import hashlib
    from clusteros import packer
    seen = {}

    def fake_build_from_iso(*, iso, qcow2, manifest, **kwargs):
        seen["iso"] = iso.read_bytes()
        project.ran.append("image")
        qcow2.write_text(f"qcow2 {time.time_ns()}")
        manifest.write_text("{}")
    monkeypatch.setattr(packer, "build_from_iso", fake_build_from_iso)
    use_iso_base(project, f"{iso_server}/noble.iso", hashlib.sha256(b"an installer ISO").hexdigest())
    assert project.doit() == ["image", "raw", "gz"]
    assert seen["iso"] == b"an installer ISO"
    assert project.doit() == []
    script = project.root / "images/common/provision.sh"
    script.write_text(script.read_text() + "# changed\n")
    assert project.doit() == ["image", "raw", "gz"]


def test_packer_iso_base_with_a_wrong_url_stops_before_packer_and_writes_nothing(project, iso_server):
    use_iso_base(project, f"{iso_server}/missing.iso", "a" * 64)   # a 404: the message is test_download's
    with pytest.raises(AssertionError):
        project.doit()
    assert project.ran == [], "nothing after the download ran"
    assert not list((project.root / "dist").glob("*.qcow2"))
    assert not list((project.root / "cache" / "downloads").glob("*"))


def test_installers_refuse_the_packer_iso_base_with_the_fix(project, iso_server):
    from tasks.installers import task_iso, task_pxe
    use_iso_base(project, f"{iso_server}/noble.iso", "a" * 64)
    for task in (task_iso(), task_pxe()):
        with pytest.raises(InstallerError, match="build with image.packer.base: native"):
            task["actions"][0]()


def test_a_fresh_checkout_reuses_the_shared_rootfs_cache(project):
    project.doit()
    paths.doit_db().unlink()          # a new clone: no doit state, same user cache
    assert "rootfs" not in project.doit()


def test_installers_rebuild_for_their_own_files_and_settings_only(project):
    assert project.doit("iso", "usb", "pxe") == ["rootfs", "image", "raw", "payload", "iso", "usb", "pxe"]
    assert project.doit("iso", "usb", "pxe") == []
    project.edit_spec("memory: 1024", "memory: 2048")
    assert project.doit("iso", "usb", "pxe") == []
    init = project.root / "images/installer/init"
    init.write_text(init.read_text() + "# changed\n")
    bump(init)
    assert project.doit("iso", "usb", "pxe") == ["iso", "usb", "pxe"], "the image and its payload stay"
    project.edit_spec("unattended: false", "unattended: true")
    assert project.doit("iso", "usb", "pxe") == ["iso", "usb", "pxe"]
    project.edit_spec("timezone: UTC", "timezone: Europe/Berlin")
    assert project.doit("iso", "usb", "pxe") == ["image", "raw", "payload", "iso", "usb", "pxe"]


def test_reporter_shows_clusteros_errors_without_a_traceback_and_bugs_with_one():
    import io
    from doit.exceptions import TaskError
    from doit.task import Task

    from clusteros.download import ChecksumMismatch
    from tasks.reporter import Reporter

    def failure(exc: Exception) -> TaskError:
        try:
            raise exc
        except Exception as caught:
            return TaskError("PythonAction Error", caught)

    out = io.StringIO()
    reporter = Reporter(out, {"failure_verbosity": 0})
    task = Task("k3s", None, verbosity=0)
    task.executed = True
    reporter.add_failure(task, failure(ChecksumMismatch("k3s: http://x/k3s does not match its checksum\n  expected")))
    reporter.add_failure(task, failure(KeyError("a bug")))
    reporter.complete_run()
    text = out.getvalue()
    assert "k3s: http://x/k3s does not match its checksum\n  expected" in text
    assert text.count("Traceback (most recent call last)") == 1 and "KeyError: 'a bug'" in text


def test_a_small_file_is_judged_by_its_content_and_a_big_one_by_its_stamp(tmp_path, monkeypatch):
    import os
    from tasks import filecheck
    checker = filecheck.StampOrContentChecker()
    small, big = tmp_path / "agent.py", tmp_path / "image.raw"
    small.write_text("print('hi')\n")
    with open(big, "wb") as f:
        f.truncate(filecheck.BIG)
    hashed = []
    monkeypatch.setattr(filecheck, "get_file_md5", lambda path: hashed.append(Path(path).name) or "digest")
    small_state, big_state = checker.get_state(str(small), None), checker.get_state(str(big), None)
    assert hashed == ["agent.py"], "the big file is not read"
    assert big_state[2] is None and checker.get_state(str(big), big_state) is None, "known stamp: nothing to do"

    for path in (small, big):
        os.utime(path, (time.time() + 5, time.time() + 5))   # rewritten, same bytes
    assert not checker.check_modified(str(small), small.stat(), small_state), "same content: unchanged"
    assert checker.check_modified(str(big), big.stat(), big_state), "a new stamp on a big file: changed"
    small.write_text("print('bye')\n")   # a different size: changed, without hashing
    hashed.clear()
    assert checker.check_modified(str(small), small.stat(), small_state) and hashed == []
