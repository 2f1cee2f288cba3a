"""One module per stage; each binds the spec to plain functions in clusteros/."""

from tasks.image import task_gz, task_image, task_image_base, task_k3s, task_packer_iso, task_raw
from tasks.installers import task_iso, task_payload, task_pxe, task_usb
from tasks.node import task_node
from tasks.prereqs import task_prereqs
from tasks.rootfs import task_rootfs
from tasks.spec import task_keys, task_validate
from tasks.vm import (task_test_vm, task_test_vm_5, task_test_vm_integration, task_vm_clean, task_vm_info,
                      task_vm_shell, task_vm_status, task_vm_stop)

__all__ = [name for name in dir() if name.startswith("task_")]
