"""The spec: defaults from the schema, resolution, and the narrow views tasks depend on."""

import json

import pytest
from pathlib import Path

from clusteros import spec as S

ROOT = Path(__file__).resolve().parents[2]


def load(text: str, tmp_path: Path) -> dict:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return S.load_spec(path)


def test_shipped_cluster_yaml_is_the_default_three_node_cluster():
    spec = S.load_spec(ROOT / "cluster.yaml")
    assert [n["name"] for n in spec["nodes"]] == ["node1", "node2", "node3"]
    assert spec["vm"]["nodes"] == 3
    assert spec["image"]["distro"] == "debian" and spec["image"]["suite"] == "bookworm"


def test_minimal_spec_gets_every_default_from_the_schema(tmp_path):
    spec = load("cluster: {name: tiny}\n", tmp_path)
    assert spec["image"]["mirror"] == "http://deb.debian.org/debian"
    assert spec["image"]["users"] == [{"name": "admin", "ssh_keys": [], "sudo": True, "shell": "/bin/bash"}]
    assert spec["network"]["wireguard"] == {"subnet": "10.99.0.0/24", "port": 51820}
    assert spec["services"]["slurm"]["partitions"] == [{"name": "main", "default": True, "max_time": "INFINITE"}]
    slurm = spec["services"]["slurm"]
    assert (slurm["storage_node"], slurm["shared_home"], slurm["accounting"], slurm["mpi_network"]) == \
        ("node1", True, True, "wg0")
    assert spec["vm"] == {"memory": 1024, "cpus": "auto", "ssh_base_port": 2223, "accel": "auto",
                          "boot": "direct", "firmware": "bios", "boot_timeout": 120, "nodes": 3, "tests": []}
    assert spec["installer"] == {"unattended": False, "target": "auto", "on_done": "reboot"}


def test_ubuntu_gets_noble_and_ubuntus_archive(tmp_path):
    spec = load("cluster: {name: u}\nimage: {distro: ubuntu}\n", tmp_path)
    assert spec["image"]["suite"] == "noble"
    assert spec["image"]["mirror"] == "http://archive.ubuntu.com/ubuntu"


def test_node_count_expands_to_named_nodes_with_stable_macs_and_addresses(tmp_path):
    spec = load("cluster: {name: lab}\nnodes: {count: 2, prefix: cn}\n", tmp_path)
    first, second = spec["nodes"]
    assert (first["name"], first["address"], first["role"]) == ("cn1", "10.42.0.11", "auto")
    assert second["address"] == "10.42.0.12"
    assert first["mac"] == S.node_mac("lab", 1) and second["mac"].endswith(":02")
    assert first["mac"].startswith(spec["node_naming"]["mac_prefix"])
    # Deterministic: the same cluster name gives the same MACs on every machine.
    assert S.node_mac("lab", 1) == load("cluster: {name: lab}\n", tmp_path)["nodes"][0]["mac"]


def test_node_list_keeps_names_roles_and_given_addresses(tmp_path):
    spec = load("""cluster: {name: lab}
nodes:
  - {name: ctl, role: controller, mac: "3c:ec:ef:00:00:01"}
  - {name: w1, address: 10.42.0.99, memory: 2048}
""", tmp_path)
    ctl, w1 = spec["nodes"]
    assert (ctl["role"], ctl["mac"], ctl["address"]) == ("controller", "3c:ec:ef:00:00:01", "10.42.0.11")
    assert (w1["role"], w1["address"], w1["memory"]) == ("auto", "10.42.0.99", 2048)
    assert spec["node_naming"]["listed"] is True


def test_spec_path_comes_from_the_environment(tmp_path, monkeypatch):
    other = tmp_path / "other.yaml"
    other.write_text("cluster: {name: fromenv}\n")
    monkeypatch.setenv("CLUSTEROS_SPEC", str(other))
    assert S.load_spec()["cluster"]["name"] == "fromenv"


def test_relative_secret_file_is_resolved_next_to_the_spec(tmp_path):
    (tmp_path / "s.key").write_bytes(b"x" * 40)
    spec = load("cluster: {name: a, secret_file: s.key}\n", tmp_path)
    assert spec["cluster"]["secret_file"] == str(tmp_path / "s.key")


def test_vm_settings_do_not_reach_the_image_views(tmp_path):
    a = load("cluster: {name: a}\nvm: {memory: 1024}\n", tmp_path)
    b = load("cluster: {name: a}\nvm: {memory: 4096, cpus: 2}\n", tmp_path)
    assert S.image_view(a) == S.image_view(b)
    assert S.rootfs_view(a) == S.rootfs_view(b)
    assert S.vm_view(a) != S.vm_view(b)


def test_timezone_changes_the_image_but_not_the_rootfs(tmp_path):
    a = load("cluster: {name: a}\n", tmp_path)
    b = load("cluster: {name: a}\nimage: {timezone: Europe/Berlin}\n", tmp_path)
    assert S.rootfs_view(a) == S.rootfs_view(b)
    assert S.image_view(a) != S.image_view(b)


def test_node_view_is_json_and_carries_no_vm_or_installer_settings():
    spec = S.load_spec(ROOT / "cluster.yaml")
    view = S.node_view(spec)
    json.dumps(view)
    assert "vm" not in view and "installer" not in view


def test_every_schema_default_is_valid_for_its_own_schema():
    import jsonschema
    schema = S.load_schema()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            # An object's default of {} only seeds its own defaults; it is not a complete value.
            if "default" in node and "type" in node and node["default"] != {}:
                resolver_schema = dict(node, **{"$defs": schema["$defs"]})
                resolver_schema.pop("default")
                jsonschema.Draft202012Validator(resolver_schema).validate(node["default"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def test_schema_is_valid_json_schema_2020_12():
    import jsonschema
    jsonschema.Draft202012Validator.check_schema(S.load_schema())


def test_spec_reference_is_generated_from_the_schema():
    from clusteros import docs
    committed = (ROOT / "docs" / "spec-reference.md").read_text()
    assert committed == docs.render(), "run: python -m clusteros.docs > docs/spec-reference.md"


def test_k3s_defaults_to_the_pinned_release_checked_by_its_published_sums(tmp_path):
    from clusteros import k3s
    binary = k3s.binary(load("cluster: {name: c}\n", tmp_path))
    release = "https://github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1"
    assert binary == k3s.Binary(f"{release}/k3s", None, f"{release}/sha256sum-amd64.txt")


def test_k3s_sources_a_spec_can_name(tmp_path):
    from clusteros import k3s
    sha = "a" * 64
    pinned = load(f"cluster: {{name: c}}\nservices: {{k3s: {{version: v1.30.8+k3s1, sha256: {sha}}}}}\n", tmp_path)
    assert k3s.binary(pinned).sha256 == sha and "v1.30.8%2Bk3s1/k3s" in k3s.binary(pinned).url
    (tmp_path / "k3s").write_bytes(b"binary")
    local = load(f"cluster: {{name: c}}\nservices: {{k3s: {{file: ./k3s, sha256: {sha}}}}}\n", tmp_path)
    assert k3s.binary(local) == k3s.Binary(str(tmp_path / "k3s"), sha, None)
    assert k3s.binary(load("cluster: {name: c}\nservices: {k3s: {enabled: false}}\n", tmp_path)) is None


def test_k3s_fetch_errors_say_what_to_do(tmp_path, monkeypatch):
    import pytest
    from clusteros import download, k3s
    monkeypatch.setenv("CLUSTEROS_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "k3s").write_bytes(b"binary")
    with pytest.raises(download.ChecksumMismatch) as mismatch:
        k3s.Binary(str(tmp_path / "k3s"), "a" * 64, None).fetch()
    assert "For K3s" not in str(mismatch.value), "a mismatch is not fixed by another source"
    with pytest.raises(download.DownloadError, match="services.k3s.file with its sha256"):
        k3s.Binary(str(tmp_path / "missing"), "a" * 64, None).fetch()


@pytest.mark.parametrize("subnet,index,lan,wg_subnet,wg", [
    ("10.42.0.0/24", 1, "10.42.0.11", "10.99.0.0/24", "10.99.0.1"),
    ("10.42.0.128/25", 3, "10.42.0.141", "10.99.0.64/26", "10.99.0.67"),
    ("192.168.8.0/22", 40, "192.168.8.50", "10.99.0.0/16", "10.99.0.40"),
])
def test_one_address_plan_for_the_host_and_the_node(subnet, index, lan, wg_subnet, wg, tmp_path):
    """The spec, the test cluster's layout and the node's own identity code agree, whatever the prefix."""
    from clusteros.vm.layout import layout
    from clusteros_node import addressing, identity
    spec = load(f"cluster: {{name: lab}}\nnodes: {{count: {index}}}\nnetwork: {{lan: {{subnet: {subnet}}}, "
                f"wireguard: {{subnet: {wg_subnet}}}}}\n", tmp_path)
    assert spec["nodes"][index - 1]["address"] == lan
    assert layout(spec, index)[index - 1].lan_address == lan
    node = identity.resolve(S.node_view(spec), {"eth0": S.node_mac("lab", index)}, "")
    assert node.address == f"{lan}/{subnet.split('/')[1]}"
    assert addressing.wg_address(spec["network"]["wireguard"]["subnet"], index) == wg
