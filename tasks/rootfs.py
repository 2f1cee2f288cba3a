"""rootfs: the cached root file system (the slow, shared layer)."""

from clusteros import rootfs
from clusteros.spec import rootfs_view
from tasks.context import spec


def task_rootfs():
    """Build the root file system with mmdebstrap (cached by its inputs, shared by checkouts)."""
    view = rootfs_view(spec())
    target = rootfs.rootfs_path(view)
    return {
        "actions": [(rootfs.build_rootfs, [view, target])],
        # The package list and recipe are in the target's name (its cache key):
        # a change to them names a new tar, and only then does this run again.
        "file_dep": [rootfs.package_list_file(view["distro"])],
        "targets": [target],
    }
