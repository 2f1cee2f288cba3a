"""image.builder: packer. Packer's QEMU builder boots a base and runs images/<distro>/provision.sh.

The HCL is generated from the spec, never written by hand. Two bases:
- native (default, works offline): the disk the native builder made, booted with
  disk_image = true; provisioning runs over SSH with the generated test key.
- iso: an upstream installer ISO with an autoinstall user-data served from
  Packer's http directory (the original ClusterOS's Ubuntu 24.04 path). It needs
  the ISO's URL and sha256 and a reachable mirror; it is generated and tested as
  text here, not built.

Packer 1.6.6 (Debian 12) has the QEMU builder built in and knows no
`required_plugins`; from 1.7 the plugin is declared.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from clusteros import disk, paths, runner
from clusteros.atomic import atomic_path, write_json
from clusteros.image import sha256_file

PLUGIN_VERSION = ">= 1.1.0"


def parse_version(text: str) -> tuple[int, int, int]:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        raise ValueError(f"cannot read a Packer version from {text!r}")
    return tuple(int(part) for part in match.groups())


def installed_version() -> tuple[int, int, int]:
    return parse_version(runner.run("packer", ["packer", "version"]))


def hcl_string(value) -> str:
    return json.dumps(str(value))   # a JSON string is a valid HCL string


def render(*, spec: dict, base: dict, output_dir: Path, ssh_key: Path, accel: str, version: tuple[int, int, int],
           provision_script: Path, serial_log: Path, http_dir: Path | None = None) -> str:
    """The Packer template. `base` is {"kind": "native", "image", "sha256"} or {"kind": "iso", "url", "sha256"}."""
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
        "memory": max(vm["memory"], 1024),
        "cpus": vm["cpus"],
        "vnc_bind_address": "127.0.0.1",
        "ssh_username": user,
        "ssh_private_key_file": str(ssh_key),
        "ssh_timeout": "30m",
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
    lines += ["}", "", "build {", '  sources = ["source.qemu.node"]', "", '  provisioner "shell" {',
              f"    script          = {hcl_string(provision_script)}",
              "    execute_command = \"sudo -E sh '{{ .Path }}'\"",
              f"    environment_vars = [{hcl_string('CLUSTEROS_CLUSTER=' + name)}]",
              "  }", "}", ""]
    return "\n".join(lines)


def autoinstall_user_data(spec: dict, pubkey: str) -> str:
    """cloud-init autoinstall for Ubuntu's live-server ISO (the iso base)."""
    user = spec["image"]["users"][0]["name"]
    keys = spec["image"]["users"][0]["ssh_keys"] or [pubkey]
    key_lines = "\n".join(f"      - {json.dumps(k)}" for k in keys)
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
  late-commands:
    - echo '{user} ALL=(ALL) NOPASSWD:ALL' > /target/etc/sudoers.d/clusteros
"""


def provision_script(distro: str) -> Path:
    """images/<distro>/provision.sh if the distro has its own, else the shared one."""
    own = paths.IMAGES_DIR / distro / "provision.sh"
    return own if own.exists() else paths.IMAGES_DIR / "common" / "provision.sh"


def build(*, spec: dict, base_qcow2: Path, base_manifest: Path, ssh_key: Path, accel: str,
          qcow2: Path, manifest: Path) -> None:
    """Run Packer on the native base; the result replaces dist/<name>.qcow2 atomically."""
    if spec["image"]["packer"]["base"] != "native":
        raise runner.ClusterOSError(
            "image.packer.base: iso is generated (clusteros.packer.render, autoinstall_user_data) and unit-tested, "
            "but this version cannot build it: its provision.sh assumes the native base, and this machine cannot "
            "reach Ubuntu's ISO. Use base: native.")
    version = installed_version()
    script = provision_script(spec["image"]["distro"])
    work_parent = (paths.dist_dir() / "tmp").resolve()
    work_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="packer-", dir=work_parent) as work_name:
        work = Path(work_name)
        template = work / "node.pkr.hcl"
        output_dir = work / "output"
        serial = paths.logs_dir() / "packer-serial.log"
        template.write_text(render(spec=spec, base={"kind": "native", "image": str(base_qcow2.resolve()),
                                                    "sha256": sha256_file(base_qcow2)},
                                   output_dir=output_dir, ssh_key=ssh_key, accel=accel, version=version,
                                   provision_script=script, serial_log=serial))
        runner.say("image", f"packer {'.'.join(map(str, version))}: booting the base under {accel.upper()} "
                            f"and running {script.relative_to(paths.PROJECT_ROOT)}; serial log: {serial}")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(Path.home()), "CHECKPOINT_DISABLE": "1",
               "PACKER_CACHE_DIR": str(paths.cache_dir() / "packer"), "PACKER_NO_COLOR": "1"}
        runner.run("image", ["packer", "build", "-color=false", template], cwd=work, env=env,
                   show=lambda line: line if "==> " in line else None, log=runner.log_path("image-packer"))
        built = output_dir / qcow2.name
        with atomic_path(qcow2) as tmp:
            shutil.move(built, tmp)
            record = json.loads(base_manifest.read_text())
            record["builder"] = {"name": "packer", "version": ".".join(map(str, version)), "base": base_qcow2.name}
            record["outputs"]["qcow2"] = {"file": qcow2.name, "sha256": sha256_file(tmp), "bytes": tmp.stat().st_size}
            # The raw disk is now whatever Packer left: the raw task checks against this.
            record["outputs"]["raw"] = {"file": qcow2.with_suffix(".raw").name, "sha256": None,
                                        "bytes": record["outputs"]["raw"]["bytes"]}
            write_json(manifest, record)
