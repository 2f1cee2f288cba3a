"""One module per stage; each binds the spec to plain functions in clusteros/. dodo.py collects every task_*."""

from tasks import image, installers, node, prereqs, rootfs, spec, vm

TASKS = {name: getattr(module, name) for module in (spec, rootfs, node, image, installers, vm, prereqs)
         for name in dir(module) if name.startswith("task_")}
