"""What the installer's /init is told, and the boot menus that start it (GRUB, iPXE, dnsmasq)."""

from __future__ import annotations

import shlex

from clusteros.installer.payload import Payload

CONSOLES = "console=ttyS0,115200n8 console=tty0"   # the last one reads the keyboard: tty0


def installer_config(installer: dict, manifest: dict, payload: "Payload") -> dict[str, str]:
    """The settings /init reads, from the spec's `installer` section, the manifest and the payload."""
    return {
        "IMAGE_NAME": manifest["name"],
        "IMAGE_BYTES": str(manifest["outputs"]["raw"]["bytes"]),
        "ROOT_FS_UUID": manifest["disk"]["root_fs_uuid"],
        "DATA_BYTES": str(payload.data_bytes),
        "DATA_SHA256": payload.data_sha256,
        "DATA_FILE_BYTES": str(payload.data_file_bytes),
        "MEDIUM_ID": medium_id(payload.data_sha256),
        "INSTALL": "auto" if installer["unattended"] else "ask",
        "TARGET": installer["target"],
        "OVERWRITE": installer.get("overwrite", ""),
        "ON_DONE": installer["on_done"],
        "IMAGE_URL": "",
    }


def medium_id(data_sha256: str) -> str:
    """Names the installer medium that carries this image; /init looks for it among the disks."""
    return f"clusteros-{data_sha256[:16]}"


def render_config(config: dict[str, str]) -> str:
    return "# Made by `doit iso/usb/pxe` from cluster.yaml; clusteros.* kernel options override it.\n" + \
        "".join(f"{key}={shlex.quote(value)}\n" for key, value in config.items())


def grub_config(name: str, config: dict[str, str]) -> str:
    """The ISO's boot menu: the spec's choice first; the others a keypress away."""
    asked = "asks before erasing a disk"
    auto = f"unattended: erases {'the only empty disk' if config['TARGET'] == 'auto' else config['TARGET']}"
    entries = [("ask", f"Install {name} ({asked})", CONSOLES),
               ("auto", f"Install {name} ({auto})", CONSOLES),
               ("ask", f"Install {name} on the serial console ({asked})", "console=tty0 console=ttyS0,115200n8"),
               ("ram", f"Run {name} from RAM (no disk is touched)", CONSOLES)]
    if config["INSTALL"] == "auto":
        entries[0], entries[1] = entries[1], entries[0]
    lines = [
        "# Made by `doit iso` from cluster.yaml.",
        "serial --unit=0 --speed=115200",
        "terminal_input console serial",
        "terminal_output console serial",
        "set default=0",
        f"set timeout={3 if config['INSTALL'] == 'auto' else 10}",
        "",
    ]
    for mode, title, consoles in entries:
        lines += [f'menuentry "{title}" {{',
                  f"    linux /boot/vmlinuz {consoles} quiet clusteros.install={mode}",
                  "    initrd /boot/initrd.img",
                  "}"]
    return "\n".join(lines) + "\n"


def ipxe_script(name: str, config: dict[str, str]) -> str:
    """PXE menu: install to the disk, unattended or asking. vmlinuz and initrd.img load from
    ${boot-url}, which is unset here (iPXE expands it to nothing): relative to the script. The
    installer fetches the image itself, from the TFTP server by default."""
    return "\n".join([
        "#!ipxe",
        f"# {name}: made by `doit pxe`. Serve this directory over TFTP (see dnsmasq.conf.example).",
        "# Over HTTP instead (much faster): set boot-url http://<server>/<path>/ and",
        "# set image-url ${boot-url}image.data.zst (`clusteros-node serve-pxe` sets both).",
        "set image-url tftp://${next-server}/image.data.zst",
        f"set install {config['INSTALL']}",
        f"menu ClusterOS {name}",
        f"item install Default: ${{install}} (auto, ask: install to disk {config['TARGET']}; ram: run from RAM)",
        "item ask Install to disk, asking before erasing",
        "item ram Run from RAM (no disk is touched; needs the image's data size + 512 MiB of memory)",
        "item shell iPXE shell",
        "choose --default install --timeout 5000 choice || goto install",
        "goto ${choice}",
        ":ram",
        "set install ram",
        "goto install",
        ":ask",
        "set install ask",
        ":install",
        f"kernel ${{boot-url}}vmlinuz {CONSOLES} quiet clusteros.install=${{install}} clusteros.image=${{image-url}} "
        "BOOTIF=01-${netX/mac:hexhyp}",   # the NIC it booted from: the installer's DHCP goes there
        "initrd ${boot-url}initrd.img",
        "boot",
        ":shell",
        "shell",
    ]) + "\n"


# iPXE for firmware whose own PXE ROM is not iPXE: it is chain-loaded first, then asks again.
CHAINLOADERS = {"undionly.kpxe": "/usr/lib/ipxe/undionly.kpxe",   # BIOS
                "snponly.efi": "/usr/lib/ipxe/snponly.efi"}       # UEFI x86-64 (the firmware's own NIC driver)


def dnsmasq_example(name: str) -> str:
    """A dnsmasq configuration that is complete but for the site: run as it is, with the LAN on the
    command line. `clusteros-node serve-pxe` runs exactly this file that way."""
    return f"""# dnsmasq: netboot {name} machines from this directory (made by `doit pxe`).
#
# Complete but for your LAN, which goes on dnsmasq's command line. `clusteros-node serve-pxe`
# runs this file exactly so; to run it yourself, as root, in this directory:
#   dnsmasq --no-daemon --conf-file=dnsmasq.conf.example --interface=eth0 --tftp-root="$PWD" \\
#           --dhcp-range=10.42.0.75,10.42.0.138,1h     # the LAN has no DHCP server: lease addresses
# or, where the LAN has a DHCP server, --dhcp-range=10.42.0.0,proxy to add only the boot information.
# Then boot.ipxe is served over TFTP; set image-url in it to an HTTP copy of image.data.zst for speed.
# serve-pxe also answers IPv6 router solicitations ("no router here"): on a LAN without an IPv6
# router, iPXE otherwise waits about 16 s for one at every boot.
port=0
log-dhcp
enable-tftp
dhcp-no-override
# The firmware's PXE ROM chain-loads iPXE; iPXE (user class "iPXE") gets the menu.
dhcp-userclass=set:ipxe,iPXE
dhcp-match=set:efi64,option:client-arch,7
dhcp-match=set:efi64,option:client-arch,9
dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe
dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi
dhcp-boot=tag:ipxe,boot.ipxe
# With a proxy range (another server leases the addresses), PXE ROMs take their file from these.
pxe-service=tag:!ipxe,x86PC,"{name}: iPXE",undionly.kpxe
pxe-service=tag:!ipxe,X86-64_EFI,"{name}: iPXE",snponly.efi
pxe-service=tag:ipxe,x86PC,"{name}",boot.ipxe
pxe-service=tag:ipxe,X86-64_EFI,"{name}",boot.ipxe
"""
