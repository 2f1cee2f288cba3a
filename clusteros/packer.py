"""image.builder: packer. Packer's QEMU builder boots a base and runs images/<distro>/provision.sh.

The HCL is generated from the spec, never written by hand. Two bases:
- native (default, works offline): the disk the native builder made, booted with
  disk_image = true; provisioning runs over SSH with the generated test key.
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

import contextlib
import json
import re
import shutil
import tempfile
from pathlib import Path

from clusteros import disk, image, paths, rootfs, runner
from clusteros.atomic import atomic_path, write_json
from clusteros.spec import rootfs_view

PLUGIN_VERSION = ">= 1.1.0"
NODE_FILES_ON_TARGET = "/tmp/clusteros-node-files.tar"


def iso_base(spec: dict) -> bool:
    return spec["image"]["builder"] == "packer" and spec["image"]["packer"]["base"] == "iso"


def parse_version(text: str) -> tuple[int, int, int]:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        raise ValueError(f"cannot read a Packer version from {text!r}")
    return tuple(int(part) for part in match.groups())


def installed_version() -> tuple[int, int, int]:
    return parse_version(runner.run("packer", ["packer", "version"]))


def hcl_string(value) -> str:
    return json.dumps(str(value))   # a JSON string is a valid HCL string


def provision_environment(spec: dict, base: str) -> list[str]:
    """What provision.sh is told: the cluster, the base, and which units to set (the native build's lists)."""
    return [f"CLUSTEROS_CLUSTER={spec['cluster']['name']}", f"CLUSTEROS_BASE={base}",
            f"CLUSTEROS_UNITS_ENABLE={' '.join(image.UNITS_ENABLED + image.OPTIONAL_UNITS)}",
            f"CLUSTEROS_UNITS_DISABLE={' '.join(image.UNITS_DISABLED)}",
            f"CLUSTEROS_UNITS_MASK={' '.join(image.UNITS_MASKED)}"]


def render(*, spec: dict, base: dict, output_dir: Path, ssh_key: Path, accel: str, version: tuple[int, int, int],
           provision_script: Path, serial_log: Path, http_dir: Path | None = None,
           node_files: Path | None = None) -> str:
    """The Packer template. `base` is {"kind": "native", "image", "sha256"} or {"kind": "iso", "url", "sha256"};
    the iso base also needs `http_dir` (autoinstall) and `node_files` (the tar provision.sh unpacks)."""
    vm, name = spec["vm"], spec["cluster"]["name"]
    user = spec["image"]["users"][0]["name"]
    size_mb = disk.parse_size(spec["image"]["disk_size"]) // disk.MIB
    lines = []
    if version >= (1, 7, 0):
        lines += ["packer {", "  required_plugins {", "    qemu = {",
                  f"      version = {hcl_string(PLUGIN_VERSION)}",
                  '      source  = "github.com/hashicorp/qemu"', "    }", "  }", "}", ""]
    source = {
        "iso_url": base["image"] if base["kind"] == "native" else base["url"],
        "iso_checksum": f"sha256:{base['sha256']}",
        "output_directory": str(output_dir),
        "vm_name": f"{name}.qcow2",
        "format": "qcow2",
        "disk_size": f"{size_mb}M",
        "disk_interface": "virtio",
        "net_device": "virtio-net",
        "accelerator": accel,
        "headless": True,
        # Ubuntu's live installer runs from RAM and does not start in the 1 GiB a test node gets.
        "memory": max(vm["memory"], 1024 if base["kind"] == "native" else 3072),
        "cpus": vm["cpus"],
        "vnc_bind_address": "127.0.0.1",
        "ssh_username": user,
        "ssh_private_key_file": str(ssh_key),
        # An unattended Ubuntu install under TCG takes most of an hour before SSH answers.
        "ssh_timeout": "30m" if base["kind"] == "native" else "120m",
        "shutdown_command": "sudo systemctl poweroff",
        "shutdown_timeout": "10m",
    }
    if base["kind"] == "native":
        source["disk_image"] = True
        source["boot_wait"] = "1s"
    else:
        source["http_directory"] = str(http_dir)
        source["boot_wait"] = "5s"
    lines.append('source "qemu" "node" {')
    for key, value in source.items():
        shown = ("true" if value else "false") if isinstance(value, bool) else (
            str(value) if isinstance(value, int) else hcl_string(value))
        lines.append(f"  {key} = {shown}")
    lines.append(f'  qemuargs = [["-serial", {hcl_string("file:" + str(serial_log))}]]')
    if base["kind"] == "iso":
        lines += ["  boot_command = [", '    "<wait><esc><wait>c<wait>",',
                  '    "linux /casper/vmlinuz autoinstall ds=nocloud-net\\\\;s=http://{{ .HTTPIP }}:{{ .HTTPPort }}/ ---<enter>",',
                  '    "initrd /casper/initrd<enter>",', '    "boot<enter>"', "  ]"]
    lines += ["}", "", "build {", '  sources = ["source.qemu.node"]', ""]
    if base["kind"] == "iso":
        lines += ['  provisioner "file" {', f"    source      = {hcl_string(node_files)}",
                  f"    destination = {hcl_string(NODE_FILES_ON_TARGET)}", "  }", ""]
    environment = ", ".join(hcl_string(v) for v in provision_environment(spec, base["kind"]))
    lines += ['  provisioner "shell" {',
              f"    script          = {hcl_string(provision_script)}",
              "    execute_command = \"sudo -E sh '{{ .Path }}'\"",
              f"    environment_vars = [{environment}]",
              "  }", "}", ""]
    return "\n".join(lines)


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


def build(*, spec: dict, base_qcow2: Path, base_manifest: Path, ssh_key: Path, accel: str,
          qcow2: Path, manifest: Path) -> None:
    """Packer on the native base; the result replaces dist/<name>.qcow2 atomically."""
    version = installed_version()
    with _work_dir() as work:
        hcl = render(spec=spec, base={"kind": "native", "image": str(base_qcow2.resolve()),
                                      "sha256": image.sha256_file(base_qcow2)},
                     output_dir=work / "output", ssh_key=ssh_key, accel=accel, version=version,
                     provision_script=provision_script(spec["image"]["distro"]), serial_log=_serial_log())
        _run(spec, work, hcl, version, accel, "booting the native base")
        record = json.loads(base_manifest.read_text())
        record["builder"] = {"name": "packer", "version": _dotted(version), "base": base_qcow2.name}
        _publish(work / "output" / qcow2.name, qcow2, manifest, record)


def build_from_iso(*, spec: dict, iso: Path, node_spec: dict, agent_pyz: Path, secret: Path,
                   k3s_binary: Path | None, ssh_key: Path, accel: str, qcow2: Path, manifest: Path) -> None:
    """Packer on Ubuntu's installer ISO (already fetched and checked): autoinstall, then the ClusterOS files."""
    version = installed_version()
    with _work_dir() as work:
        hcl = prepare_iso_build(work, spec=spec, iso=iso, node_spec=node_spec, agent_pyz=agent_pyz, secret=secret,
                                k3s_binary=k3s_binary, ssh_key=ssh_key, accel=accel, version=version)
        _run(spec, work, hcl, version, accel, f"installing {iso.name} unattended")
        image_spec = spec["image"]
        disk_bytes = disk.parse_size(image_spec["disk_size"])
        record = {
            "name": spec["cluster"]["name"], "distro": image_spec["distro"], "suite": image_spec["suite"],
            "architecture": image_spec["architecture"], "source_date_epoch": image.source_epoch(),
            "builder": {"name": "packer", "version": _dotted(version), "base": iso.name},
            # Ubuntu's installer lays out the disk: no UUIDs of ours to record.
            "disk": {"size": disk_bytes, "root_fs_uuid": None, "disk_uuid": None},
            "outputs": {"raw": {"bytes": disk_bytes}},
            "packages": {}, "k3s": {"sha256": image.sha256_file(k3s_binary)} if k3s_binary else None,
        }
        _publish(work / "output" / qcow2.name, qcow2, manifest, record)


def prepare_iso_build(work: Path, *, spec: dict, iso: Path, node_spec: dict, agent_pyz: Path, secret: Path,
                      k3s_binary: Path | None, ssh_key: Path, accel: str, version: tuple[int, int, int]) -> str:
    """Everything Packer reads for the iso base, written into `work`: http/ (autoinstall) and the node
    files; returns the template."""
    distro = spec["image"]["distro"]
    http = work / "http"
    http.mkdir()
    pubkey = ssh_key.with_suffix(".pub").read_text().strip()
    (http / "user-data").write_text(autoinstall_user_data(spec, pubkey, rootfs.packages(rootfs_view(spec))))
    (http / "meta-data").write_text("")
    node_files = work / "node-files.tar"
    image.write_node_files_tar(node_files, distro=distro, node_spec=node_spec, agent_pyz=agent_pyz,
                               secret=secret, k3s_binary=k3s_binary)
    return render(spec=spec, base={"kind": "iso", "url": str(iso.resolve()), "sha256": image.sha256_file(iso)},
                  output_dir=work / "output", ssh_key=ssh_key, accel=accel, version=version,
                  provision_script=provision_script(distro), serial_log=_serial_log(), http_dir=http,
                  node_files=node_files)


def _dotted(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


def _serial_log() -> Path:
    return paths.logs_dir() / "packer-serial.log"


@contextlib.contextmanager
def _work_dir():
    parent = (paths.dist_dir() / "tmp").resolve()
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="packer-", dir=parent) as name:
        yield Path(name)


def _run(spec: dict, work: Path, hcl: str, version: tuple[int, int, int], accel: str, doing: str) -> None:
    template = work / "node.pkr.hcl"
    template.write_text(hcl)
    script = provision_script(spec["image"]["distro"])
    runner.say("image", f"packer {_dotted(version)}: {doing} under {accel.upper()}, then "
                        f"{script.relative_to(paths.PROJECT_ROOT)}; serial log: {_serial_log()}")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(Path.home()), "CHECKPOINT_DISABLE": "1",
           "PACKER_CACHE_DIR": str(paths.cache_dir() / "packer"), "PACKER_NO_COLOR": "1"}
    runner.run("image", ["packer", "build", "-color=false", template], cwd=work, env=env,
               show=lambda line: line if "==> " in line else None, log=runner.log_path("image-packer"))


def _publish(built: Path, qcow2: Path, manifest: Path, record: dict) -> None:
    """Packer's disk becomes dist/<name>.qcow2, and the manifest says so."""
    with atomic_path(qcow2) as tmp:
        shutil.move(built, tmp)
        record["outputs"]["qcow2"] = {"file": qcow2.name, "sha256": image.sha256_file(tmp),
                                      "bytes": tmp.stat().st_size}
        # The raw disk is whatever Packer left: the raw task checks it against this.
        record["outputs"]["raw"] = {"file": qcow2.with_suffix(".raw").name, "sha256": None,
                                    "bytes": record["outputs"]["raw"]["bytes"]}
        write_json(manifest, record)
