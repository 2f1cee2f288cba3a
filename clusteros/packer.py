"""image.builder: packer. Packer's QEMU builder boots a base and runs images/<distro>/provision.sh.

The HCL is generated from the spec, never written by hand. Two bases:
- native (default, works offline): the disk the native builder made, booted with
  disk_image = true (with vm.boot: direct, by its own kernel and the test VMs' small
  initramfs, as a test VM boots: no firmware, GRUB or full initrd to wait for);
  provisioning runs over SSH with the generated test key.
- iso: Ubuntu's live-server ISO (the original ClusterOS's 24.04 path), fetched
  and checked like every download, installed unattended by an autoinstall
  user-data served from Packer's http directory (it installs the package list);
  Packer then uploads the ClusterOS files as a tar (overlay, node-agent, spec,
  secret, K3s) and provision.sh unpacks them and sets the units. It needs
  Ubuntu's ISO and archive, which this project's CI cannot reach.

Packer 1.6.6 (Debian 12) has the QEMU builder built in and knows no
`required_plugins`; from 1.7 the plugin is declared.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clusteros import customize, disk, download, image, paths, rootfs, runner
from clusteros.atomic import atomic_path, work_dir, write_json
from clusteros.errors import ClusterOSError
from clusteros.hashing import sha256_file
from clusteros.image import ImageInputs
from clusteros.manifest import image_manifest
from clusteros.spec import rootfs_view
from clusteros.vm import qemu

PLUGIN_VERSION = ">= 1.1.0"
NODE_FILES_ON_TARGET = "/tmp/clusteros-node-files.tar"


def iso_base(spec: dict) -> bool:
    return spec["image"]["builder"] == "packer" and spec["image"]["packer"]["base"] == "iso"


def iso_cache_path(spec: dict) -> Path:
    """Where `doit packer_iso` leaves the checked installer ISO."""
    return download.cache_path(spec["image"]["packer"]["iso_url"], spec["image"]["packer"]["iso_sha256"])


def parse_version(text: str) -> tuple[int, int, int]:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        raise ClusterOSError(f"cannot read a Packer version from {text!r}",
                             fix="check `packer version`; ClusterOS is tested with Debian's Packer 1.6.6")
    return tuple(int(part) for part in match.groups())


def installed_version() -> tuple[int, int, int]:
    return parse_version(runner.run("packer", ["packer", "version"], timeout=60))


def hcl_string(value) -> str:
    return json.dumps(str(value))   # a JSON string is a valid HCL string


def provision_environment(spec: dict, base: str) -> list[str]:
    """What provision.sh is told: the cluster, the base, and which units to set (the native build's lists)."""
    return [f"CLUSTEROS_CLUSTER={spec['cluster']['name']}", f"CLUSTEROS_BASE={base}",
            f"CLUSTEROS_UNITS_ENABLE={' '.join(customize.UNITS_ENABLED + customize.OPTIONAL_UNITS)}",
            f"CLUSTEROS_UNITS_DISABLE={' '.join(customize.UNITS_DISABLED)}",
            f"CLUSTEROS_UNITS_MASK={' '.join(customize.UNITS_MASKED)}"]


@dataclass(frozen=True)
class PackerJob:
    """One Packer run: what it boots, where it works, how it logs in.

    `base` is {"kind": "native", "image", "sha256"} or {"kind": "iso", "url", "sha256"}; the iso
    base also reads work/http (autoinstall) and work/node-files.tar (the files provision.sh unpacks).
    """
    base: dict
    work: Path
    ssh_key: Path
    accel: str
    version: tuple[int, int, int]
    boot: qemu.Boot | None = None     # the native base's kernel, when it is booted directly

    @property
    def kind(self) -> str:
        return self.base["kind"]

    @property
    def ssh_keys(self) -> Path:
        """The test key for the first user, handed to the native base as test VMs get theirs
        (a systemd credential through fw_cfg, kept in RAM): the image itself holds no key."""
        return self.work / "ssh-keys"

    @property
    def serial_log(self) -> Path:
        # Absolute: Packer runs QEMU in its own working directory.
        return (paths.logs_dir() / "packer-serial.log").resolve()


def _source(spec: dict, job: PackerJob) -> dict:
    vm, name = spec["vm"], spec["cluster"]["name"]
    native = job.kind == "native"
    source = {
        "iso_url": job.base["image"] if native else job.base["url"],
        "iso_checksum": f"sha256:{job.base['sha256']}",
        "output_directory": str(job.work / "output"),
        "vm_name": f"{name}.qcow2",
        "format": "qcow2",
        "disk_size": f"{disk.parse_size(spec['image']['disk_size']) // disk.MIB}M",
        "disk_interface": "virtio",
        "net_device": "virtio-net",
        "accelerator": job.accel,
        "headless": True,
        # Ubuntu's live installer runs from RAM and does not start in the 1 GiB a test node gets.
        "memory": max(vm["memory"], 1024 if native else 3072),
        # auto: one. The build machine runs beside other work (a test suite's VMs, a desktop), and
        # a 2-CPU guest on a busy host waits on its own descheduled CPU: Packer's build took 143 s
        # with two in a full test run against 99 s with one.
        "cpus": 1 if vm["cpus"] == "auto" else vm["cpus"],
        "vnc_bind_address": "127.0.0.1",
        "vnc_use_password": True,     # 127.0.0.1 is open to every user of the host: a password shuts them out
        "ssh_username": spec["image"]["users"][0]["name"],
        "ssh_private_key_file": str(job.ssh_key.resolve()),   # Packer runs in its own folder
        # An unattended Ubuntu install under TCG takes most of an hour before SSH answers.
        "ssh_timeout": "30m" if native else "120m",
        "shutdown_command": "sudo systemctl poweroff",
        "shutdown_timeout": "10m",
    }
    if native:
        source.update(disk_image=True, boot_wait="1s")
    else:
        source.update(http_directory=str(job.work / "http"), boot_wait="5s")
    return source


def _hcl_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else hcl_string(value)


def _required_plugins(version: tuple[int, int, int]) -> list[str]:
    if version < (1, 7, 0):
        return []
    return ["packer {", "  required_plugins {", "    qemu = {", f"      version = {hcl_string(PLUGIN_VERSION)}",
            '      source  = "github.com/hashicorp/qemu"', "    }", "  }", "}", ""]


ISO_BOOT_COMMAND = ["  boot_command = [", '    "<wait><esc><wait>c<wait>",',
                    '    "linux /casper/vmlinuz autoinstall ds=nocloud-net\\\\;s=http://{{ .HTTPIP }}:{{ .HTTPPort }}/ ---<enter>",',
                    '    "initrd /casper/initrd<enter>",', '    "boot<enter>"', "  ]"]


def _build_block(spec: dict, job: PackerJob) -> list[str]:
    lines = ["build {", '  sources = ["source.qemu.node"]', ""]
    if job.kind == "iso":
        lines += ['  provisioner "file" {', f"    source      = {hcl_string(job.work / 'node-files.tar')}",
                  f"    destination = {hcl_string(NODE_FILES_ON_TARGET)}", "  }", ""]
    environment = ", ".join(hcl_string(v) for v in provision_environment(spec, job.kind))
    return lines + ['  provisioner "shell" {',
                    f"    script          = {hcl_string(provision_script(spec['image']['distro']))}",
                    "    execute_command = \"sudo -E sh '{{ .Path }}'\"",
                    f"    environment_vars = [{environment}]", "  }", "}", ""]


def render(spec: dict, job: PackerJob) -> str:
    """The Packer template for `job`, generated from the spec."""
    lines = _required_plugins(job.version) + ['source "qemu" "node" {']
    lines += [f"  {key} = {_hcl_value(value)}" for key, value in _source(spec, job).items()]
    # Packer's own SSH forward listens on every address: this one, in its place, on 127.0.0.1 alone.
    forward = "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"
    qemuargs = [["-serial", "file:" + str(job.serial_log)], ["-netdev", forward], ["-device", "virtio-net,netdev=user.0"]]
    if job.kind == "native":
        qemuargs.append(["-fw_cfg", f"name=opt/io.systemd.credentials/clusteros-ssh-keys,file={job.ssh_keys.resolve()}"])
    if job.boot is not None and job.boot.direct:
        qemuargs += [["-kernel", str(job.boot.kernel)], ["-initrd", str(job.boot.initrd)], ["-append", job.boot.cmdline]]
    lines.append("  qemuargs = [" + ", ".join("[" + ", ".join(hcl_string(a) for a in pair) + "]" for pair in qemuargs) + "]")
    if job.kind == "iso":
        lines += ISO_BOOT_COMMAND
    return "\n".join(lines + ["}", ""] + _build_block(spec, job))


def autoinstall_user_data(spec: dict, pubkey: str, packages: list[str]) -> str:
    """cloud-init autoinstall for Ubuntu's live-server ISO (the iso base): user, keys, the node's packages."""
    user = spec["image"]["users"][0]["name"]
    keys = spec["image"]["users"][0]["ssh_keys"] or [pubkey]
    key_lines = "\n".join(f"      - {json.dumps(k)}" for k in keys)
    package_lines = "\n".join(f"    - {json.dumps(p)}" for p in packages)
    return f"""#cloud-config
autoinstall:
  version: 1
  locale: {spec['image']['locale']}
  timezone: {spec['image']['timezone']}
  identity:
    hostname: clusteros
    username: {user}
    password: "*"
  ssh:
    install-server: true
    allow-pw: false
    authorized-keys:
{key_lines}
  storage:
    layout:
      name: direct
  packages:
{package_lines}
  late-commands:
    - echo '{user} ALL=(ALL) NOPASSWD:ALL' > /target/etc/sudoers.d/clusteros
"""


def provision_script(distro: str) -> Path:
    """images/<distro>/provision.sh if the distro has its own, else the shared one."""
    own = paths.IMAGES_DIR / distro / "provision.sh"
    return own if own.exists() else paths.IMAGES_DIR / "common" / "provision.sh"


@contextmanager
def packer_job(base: dict, ssh_key: Path, accel: str, boot: qemu.Boot | None = None) -> Iterator[PackerJob]:
    """A run of the installed Packer on `base`, in a work folder of its own (removed after)."""
    with work_dir("packer-") as work:
        yield PackerJob(base, work, ssh_key, accel, installed_version(), boot)


def build(*, spec: dict, base_qcow2: Path, base_manifest: Path, ssh_key: Path, accel: str,
          qcow2: Path, manifest: Path) -> None:
    """Packer on the native base; the result replaces dist/<name>.qcow2 atomically."""
    native = {"kind": "native", "image": str(base_qcow2.resolve()), "sha256": sha256_file(base_qcow2)}
    record = json.loads(base_manifest.read_text())
    boot = qemu.boot_of(spec, record, base_qcow2.parent)
    with packer_job(native, ssh_key, accel, boot) as job:
        user, pubkey = spec["image"]["users"][0]["name"], ssh_key.with_suffix(".pub").read_text().strip()
        with atomic_path(job.ssh_keys, mode=0o600) as tmp:
            tmp.write_text(f"{user} {pubkey}\n")
        _run(spec, job, f"booting the native base ({boot.describe()})")
        _publish(job.work / "output" / qcow2.name, qcow2, manifest, lambda tmp: {
            **record, "builder": {"name": "packer", "version": _dotted(job.version), "base": base_qcow2.name},
            "outputs": image_manifest_outputs(record, tmp, qcow2.name)})


def image_manifest_outputs(record: dict, qcow2: Path, name: str) -> dict:
    """The base's outputs with the qcow2 Packer left in their place."""
    return {**record["outputs"], "qcow2": {"file": name, "sha256": sha256_file(qcow2), "bytes": qcow2.stat().st_size}}


def build_from_iso(*, spec: dict, iso: Path, inputs: ImageInputs, ssh_key: Path, accel: str,
                   qcow2: Path, manifest: Path) -> None:
    """Packer on Ubuntu's installer ISO (already fetched and checked): autoinstall, then the ClusterOS files."""
    with packer_job({"kind": "iso", "url": str(iso.resolve()), "sha256": sha256_file(iso)}, ssh_key, accel) as job:
        prepare_iso_build(spec, job, inputs)
        _run(spec, job, f"installing {iso.name} unattended")
        _publish(job.work / "output" / qcow2.name, qcow2, manifest, lambda tmp: image_manifest(
            name=inputs.name, image=inputs.image, epoch=image.source_epoch(),
            builder={"name": "packer", "version": _dotted(job.version), "base": iso.name},
            # Ubuntu's installer lays out the disk: no UUIDs of ours to record.
            disk={"size": disk.parse_size(inputs.image["disk_size"]), "root_fs_uuid": None, "disk_uuid": None},
            inputs=inputs.spec_inputs, qcow2=tmp, qcow2_name=qcow2.name, packages={},
            k3s_binary=inputs.k3s_binary))


def prepare_iso_build(spec: dict, job: PackerJob, inputs: ImageInputs) -> str:
    """Everything Packer reads for the iso base, written into the job's work folder: http/ (autoinstall)
    and the node files; returns the template."""
    http = job.work / "http"
    http.mkdir()
    pubkey = job.ssh_key.with_suffix(".pub").read_text().strip()
    (http / "user-data").write_text(autoinstall_user_data(spec, pubkey, rootfs.packages(rootfs_view(spec))))
    (http / "meta-data").write_text("")
    image.write_node_files_tar(job.work / "node-files.tar", inputs)
    return render(spec, job)


def _dotted(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


def _run(spec: dict, job: PackerJob, doing: str) -> None:
    template = job.work / "node.pkr.hcl"
    template.write_text(render(spec, job))
    script = provision_script(spec["image"]["distro"])
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(Path.home()), "CHECKPOINT_DISABLE": "1",
           "PACKER_CACHE_DIR": str((paths.cache_dir() / "packer").resolve()), "PACKER_NO_COLOR": "1"}
    job.serial_log.parent.mkdir(parents=True, exist_ok=True)
    with runner.step("image", f"packer {_dotted(job.version)}: {doing} under {job.accel.upper()}, then "
                              f"{script.relative_to(paths.PROJECT_ROOT)}; serial log: {job.serial_log}"):
        runner.run("image", ["packer", "build", "-color=false", template], cwd=job.work, env=env,
                   show=lambda line: line if "==> " in line else None, log=runner.log_path("image-packer"),
                   timeout=4 * 3600)


def _publish(built: Path, qcow2: Path, manifest: Path, record_of) -> None:
    """Packer's disk becomes dist/<name>.qcow2, with the manifest `record_of(disk)` makes for it."""
    with atomic_path(qcow2) as tmp:
        shutil.move(built, tmp)
        write_json(manifest, record_of(tmp))
