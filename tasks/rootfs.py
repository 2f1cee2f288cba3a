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
        # The tar's name is the hash of every input (package list included): a change
        # names a new tar. So an existing tar is up to date, even for a checkout whose
        # doit state has never seen it (the cache is shared by every checkout).
        "targets": [target],
        "uptodate": [target.exists],
    }
