"""image, raw, gz: the node image and its conversions."""

from doit.tools import config_changed

from clusteros import accel, convert, download, image, k3s, packer, paths, rootfs, secrets
from clusteros.spec import image_view, node_view, rootfs_view
from tasks.context import dist, node_pyz, spec

IMAGE_CODE = ["image.py", "disk.py"]


def _image_inputs(s: dict) -> dict:
    """What the disk's identity (UUIDs) is derived from: the same inputs give the same disk."""
    return {"rootfs": rootfs.rootfs_path(rootfs_view(s)).name, "spec": image_view(s)}


def task_k3s():
    """Fetch the K3s binary the spec names (a release, a url or a file), checked against its sha256."""
    binary = k3s.binary(spec())
    if binary is None:
        return {"actions": [], "uptodate": [True], "doc": "K3s is disabled in the spec"}
    def fetch():
        binary.fetch()   # doit actions return None, not the path
    return {"actions": [fetch], "targets": [binary.cache_path], "uptodate": [True]}


def _native(s: dict, qcow2, manifest) -> dict:
    """The native build of `qcow2`: the image itself, or the base Packer starts from."""
    view = rootfs_view(s)
    key = secrets.test_key_path(s)
    deps = {
        "rootfs_tar": rootfs.rootfs_path(view),
        "agent_pyz": node_pyz(),
        "secret": secrets.cluster_secret_path(s),
        "test_pubkey": key.with_suffix(".pub"),
    }
    if (binary := k3s.binary(s)) is not None:
        deps["k3s_binary"] = binary.cache_path
    return {
        "actions": [(image.build_image, [], dict(
            spec=s, node_spec=node_view(s), qcow2=qcow2, manifest=manifest, inputs=_image_inputs(s), **deps))],
        "file_dep": list(deps.values()) + image.overlay_files(s["image"]["distro"])
                    + [paths.PROJECT_ROOT / "clusteros" / f for f in IMAGE_CODE],
        "task_dep": ["validate"],
        "targets": [qcow2, manifest],
        "uptodate": [config_changed(image_view(s))],
        "clean": True,
    }


def _packer_build(s: dict) -> None:
    packer.build(spec=s, base_qcow2=dist("-base.qcow2"), base_manifest=dist("-base.manifest.json"),
                 ssh_key=secrets.test_key_path(s), accel=accel.choose(s["vm"]["accel"]).name,
                 qcow2=dist(".qcow2"), manifest=dist(".manifest.json"))


def _packer_iso_build(s: dict, **files) -> None:
    packer.build_from_iso(spec=s, node_spec=node_view(s), ssh_key=secrets.test_key_path(s),
                          accel=accel.choose(s["vm"]["accel"]).name, qcow2=dist(".qcow2"),
                          manifest=dist(".manifest.json"), **files)


def task_packer_iso():
    """builder: packer with base: iso only: fetch the installer ISO named in the spec, checked against its sha256."""
    s = spec()
    if not packer.iso_base(s):
        return {"actions": [], "uptodate": [True], "doc": "only used with image.packer.base: iso"}
    url, sha = s["image"]["packer"]["iso_url"], s["image"]["packer"]["iso_sha256"]
    def fetch():
        download.fetch(url, sha, label="iso")
    return {"actions": [fetch], "targets": [_installer_iso(s)], "uptodate": [True]}


def _installer_iso(s: dict):
    """Where task_packer_iso leaves the checked ISO."""
    return download.cache_path(s["image"]["packer"]["iso_url"], s["image"]["packer"]["iso_sha256"])


def task_image_base():
    """builder: packer only: the native build Packer boots and provisions (dist/<name>-base.qcow2)."""
    s = spec()
    if s["image"]["builder"] != "packer" or packer.iso_base(s):
        return {"actions": [], "uptodate": [True], "doc": "only used with image.builder: packer, base: native"}
    return _native(s, dist("-base.qcow2"), dist("-base.manifest.json"))


def task_image():
    """Build the bootable node image dist/<name>.qcow2 and its manifest (native, or by Packer)."""
    s = spec()
    if s["image"]["builder"] == "native":
        return _native(s, dist(".qcow2"), dist(".manifest.json"))
    script = packer.provision_script(s["image"]["distro"])
    code = [paths.PROJECT_ROOT / "clusteros" / f for f in ("packer.py", "image.py")]
    if packer.iso_base(s):
        files = {"iso": _installer_iso(s),
                 "agent_pyz": node_pyz(), "secret": secrets.cluster_secret_path(s),
                 "k3s_binary": binary.cache_path if (binary := k3s.binary(s)) else None}
        action = (_packer_iso_build, [s], files)
        inputs = [f for f in files.values() if f is not None] + [
            secrets.test_key_path(s).with_suffix(".pub"), rootfs.package_list_file(s["image"]["distro"])
        ] + image.overlay_files(s["image"]["distro"])
    else:
        action = (_packer_build, [s])
        inputs = [dist("-base.qcow2"), dist("-base.manifest.json")]
    return {
        "actions": [action],
        "file_dep": inputs + [script] + code,
        "task_dep": ["validate"],
        "targets": [dist(".qcow2"), dist(".manifest.json")],
        "uptodate": [config_changed({"image": image_view(s), "vm": {k: s["vm"][k] for k in ("memory", "cpus")}})],
        "clean": True,
    }


def task_raw():
    """Convert the image to a sparse raw disk dist/<name>.raw (checked against the manifest)."""
    return {
        "actions": [(convert.to_raw, [dist(".qcow2"), dist(".manifest.json"), dist(".raw")])],
        "file_dep": [dist(".qcow2"), dist(".manifest.json")],
        "targets": [dist(".raw")],
        "clean": True,
    }


def task_gz():
    """Compress the raw disk to dist/<name>.raw.gz with every core."""
    return {
        "actions": [(convert.compress, [dist(".raw"), dist(".raw.gz")])],
        "file_dep": [dist(".raw")],
        "targets": [dist(".raw.gz"), dist(".raw.gz.sha256")],
        "clean": True,
    }
