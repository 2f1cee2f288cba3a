"""ClusterOS node-agent: runs on every node, stdlib only (the image's python3 is all it has)."""

SPEC_FILE = "/etc/clusteros/spec.json"
STATE_DIR = "/run/clusteros"
