"""ClusterOS: one cluster.yaml in, bootable node images and a proven QEMU test cluster out."""

__version__ = "0.1.0"
