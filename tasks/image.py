"""image, raw, gz (and k3s, packer_iso, image_base): the node image and its conversions."""

from doit.tools import config_changed

from clusteros import accel, convert, customize, image, packer, rootfs, secrets, vmboot
from clusteros.spec import image_view, node_view, rootfs_view
from tasks.code import code_deps
from tasks.context import dist, node_pyz, spec


def _k3s_binary(s: dict):
    from clusteros import k3s   # imports requests: only where a download can happen
    return k3s.binary(s)


def image_inputs(s: dict, *, native: bool = True) -> image.ImageInputs:
    """The spec's image, as the value every builder takes."""
    binary = _k3s_binary(s)
    view = rootfs_view(s)
    return image.ImageInputs(
        name=s["cluster"]["name"], image=s["image"], node_spec=node_view(s), agent_pyz=node_pyz(),
        owner_pubkey=secrets.owner_key_path(s).with_suffix(".pub"),
        rootfs_tar=rootfs.rootfs_path(view) if native else None,
        k3s_binary=binary.cache_path if binary is not None else None,
        spec_inputs={"rootfs": rootfs.rootfs_path(view).name, "spec": image_view(s)})


def _input_files(inputs: image.ImageInputs) -> list:
    files = [inputs.agent_pyz, inputs.owner_pubkey, inputs.rootfs_tar, inputs.k3s_binary]
    return [f for f in files if f is not None] + customize.overlay_files(inputs.distro)


def _build_native(qcow2, manifest) -> None:
    # Made at run time: the owner's key and the K3s binary exist only once their tasks have run.
    image.build_image(image_inputs(spec()), qcow2, manifest)


def _native(s: dict, qcow2, manifest) -> dict:
    """The native build of `qcow2`: the image itself, or the base Packer starts from."""
    return {
        "actions": [(_build_native, [qcow2, manifest])],
        "file_dep": _input_files(image_inputs(s)) + [vmboot.init_script(), *code_deps("clusteros.image")],
        "task_dep": ["validate"],
        "targets": [qcow2, manifest, *image.vm_boot_files(qcow2)],
        "uptodate": [config_changed(image_view(s))],
        "clean": True,
    }


def task_k3s():
    """Fetch the K3s binary the spec names (a release, a url or a file), checked against its sha256."""
    binary = _k3s_binary(spec())
    if binary is None:
        return {"actions": [], "uptodate": [True], "doc": "K3s is disabled in the spec"}
    return {"actions": [lambda: binary.fetch() and None], "targets": [binary.cache_path], "uptodate": [True]}


def task_packer_iso():
    """builder: packer with base: iso only: fetch the installer ISO named in the spec, checked against its sha256."""
    s = spec()
    if not packer.iso_base(s):
        return {"actions": [], "uptodate": [True], "doc": "only used with image.packer.base: iso"}

    def fetch():
        from clusteros import download
        download.fetch(s["image"]["packer"]["iso_url"], s["image"]["packer"]["iso_sha256"], label="iso")
    return {"actions": [fetch], "targets": [packer.iso_cache_path(s)], "uptodate": [True]}


def task_image_base():
    """builder: packer only: the native build Packer boots and provisions (dist/<name>-base.qcow2)."""
    s = spec()
    if s["image"]["builder"] != "packer" or packer.iso_base(s):
        return {"actions": [], "uptodate": [True], "doc": "only used with image.builder: packer, base: native"}
    return _native(s, dist("-base.qcow2"), dist("-base.manifest.json"))


def _packer_build() -> None:
    s = spec()
    common = dict(spec=s, ssh_key=secrets.test_key_path(s), accel=accel.choose(s["vm"]["accel"]).name,
                  qcow2=dist(".qcow2"), manifest=dist(".manifest.json"))
    if packer.iso_base(s):
        packer.build_from_iso(iso=packer.iso_cache_path(s), inputs=image_inputs(s, native=False), **common)
    else:
        packer.build(base_qcow2=dist("-base.qcow2"), base_manifest=dist("-base.manifest.json"), **common)


def _packer(s: dict) -> dict:
    if packer.iso_base(s):
        inputs = _input_files(image_inputs(s, native=False)) + [packer.iso_cache_path(s),
                                                                rootfs.package_list_file(s["image"]["distro"])]
    else:
        inputs = [dist("-base.qcow2"), dist("-base.manifest.json"), *image.vm_boot_files(dist("-base.qcow2"))]
    return {
        "actions": [_packer_build],
        "file_dep": inputs + [packer.provision_script(s["image"]["distro"])] + list(code_deps("clusteros.packer")),
        "task_dep": ["validate"],
        "targets": [dist(".qcow2"), dist(".manifest.json")],
        "uptodate": [config_changed({"image": image_view(s), "vm": {k: s["vm"][k] for k in ("memory", "cpus")}})],
        "clean": True,
    }


def task_image():
    """Build the bootable node image dist/<name>.qcow2 and its manifest (native, or by Packer)."""
    s = spec()
    return _native(s, dist(".qcow2"), dist(".manifest.json")) if s["image"]["builder"] == "native" else _packer(s)


def task_raw():
    """Convert the image to a sparse raw disk dist/<name>.raw (compared with the qcow2 by QEMU)."""
    return {
        "actions": [(convert.to_raw, [dist(".qcow2"), dist(".raw")])],
        "file_dep": [dist(".qcow2"), *code_deps("clusteros.convert")],
        "targets": [dist(".raw")],
        "clean": True,
    }


def task_gz():
    """Compress the raw disk to dist/<name>.raw.gz with every core."""
    return {
        "actions": [(convert.compress, [dist(".raw"), dist(".raw.gz")])],
        "file_dep": [dist(".raw"), *code_deps("clusteros.convert")],
        "targets": [dist(".raw.gz"), dist(".raw.gz.sha256")],
        "clean": True,
    }
