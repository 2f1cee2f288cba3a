"""iso, usb, pxe: installers built from the node image.

Declared so the graph is whole; their builders come with the installers issue.
Until then each fails with a plain message instead of producing a fake file.
"""

from doit.exceptions import TaskFailed

from tasks.context import dist


def _not_built_yet(what: str):
    def action():
        return TaskFailed(f"{what} is not implemented yet in this version of ClusterOS; "
                          "use dist/<name>.raw.gz with dd for now (see README: Deploying to hardware)")
    return action


def task_iso():
    """Hybrid installer ISO dist/<name>-installer.iso (BIOS and UEFI, CD and USB)."""
    return {"actions": [_not_built_yet("the installer ISO")], "file_dep": [dist(".qcow2")],
            "targets": [dist("-installer.iso")]}


def task_usb():
    """USB installer image dist/<name>-usb.img.gz."""
    return {"actions": [_not_built_yet("the USB installer")], "file_dep": [dist(".qcow2")],
            "targets": [dist("-usb.img.gz")]}


def task_pxe():
    """PXE boot set dist/pxe/ (kernel, initrd, root image, iPXE script)."""
    return {"actions": [_not_built_yet("the PXE set")], "file_dep": [dist(".qcow2")]}
