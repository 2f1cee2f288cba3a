"""The Packer template generated from the spec (Packer itself runs in the e2e test)."""

import subprocess
from pathlib import Path

import pytest

from clusteros import agent, packer
from clusteros.errors import ClusterOSError
from clusteros.image import ImageInputs
from clusteros.spec import check_spec_data, load_spec, node_view

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spec():
    return load_spec(ROOT / "cluster.yaml")


def native(spec, version, tmp_path):
    job = packer.PackerJob({"kind": "native", "image": "/dist/democluster-base.qcow2", "sha256": "ab" * 32},
                           tmp_path, tmp_path / "id_ed25519", "tcg", version)
    return packer.render(spec, job)


def test_native_base_boots_the_native_disk_with_the_test_key(spec, tmp_path):
    hcl = native(spec, (1, 6, 6), tmp_path)
    assert "disk_image = true" in hcl
    assert f'iso_checksum = "sha256:{"ab" * 32}"' in hcl
    assert 'accelerator = "tcg"' in hcl and 'ssh_username = "admin"' in hcl
    assert f'ssh_private_key_file = "{tmp_path / "id_ed25519"}"' in hcl
    assert 'disk_size = "4096M"' in hcl and 'vnc_bind_address = "127.0.0.1"' in hcl
    assert "vnc_use_password = true" in hcl, "no other user of the host may watch the build"
    assert "hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22" in hcl, "Packer's SSH forward on 127.0.0.1 alone"
    # The base image holds no key: Packer's VM gets the test key as test VMs do, in RAM.
    assert f'"-fw_cfg", "name=opt/io.systemd.credentials/clusteros-ssh-keys,file={tmp_path / "ssh-keys"}"' in hcl
    assert "images/common/provision.sh" in hcl


def test_a_native_base_with_vm_boot_files_is_booted_by_its_own_kernel_as_a_test_vm_is(spec, tmp_path):
    """vm.boot: direct (the default): Packer's VM skips firmware, GRUB and the full initrd too."""
    from clusteros.vm import qemu
    record = {"vm_boot": {"kernel": "democluster-base.vmlinuz", "initrd": "democluster-base.vm-initrd.img",
                          "cmdline": "root=UUID=1234 console=ttyS0"}}
    boot = qemu.boot_of(spec, record, tmp_path)
    job = packer.PackerJob({"kind": "native", "image": "/dist/democluster-base.qcow2", "sha256": "ab" * 32},
                           tmp_path, tmp_path / "id_ed25519", "tcg", (1, 6, 6), boot)
    hcl = packer.render(spec, job)
    assert f'["-kernel", "{tmp_path / "democluster-base.vmlinuz"}"]' in hcl
    assert f'["-initrd", "{tmp_path / "democluster-base.vm-initrd.img"}"]' in hcl
    assert '["-append", "root=UUID=1234 console=ttyS0"]' in hcl
    firmware = qemu.boot_of(dict(spec, vm=dict(spec["vm"], boot="firmware")), record, tmp_path)
    job = packer.PackerJob(job.base, tmp_path, job.ssh_key, "tcg", (1, 6, 6), firmware)
    assert '"-kernel"' not in packer.render(spec, job), "vm.boot: firmware boots it through GRUB"
    assert '"-kernel"' not in native(spec, (1, 6, 6), tmp_path), "a base without VM boot files, too"


def test_a_relative_state_dir_reaches_packer_as_an_absolute_key_path(spec, tmp_path, monkeypatch):
    """Packer runs in its own folder: the state dir the e2e tests (and a user) may give relatively
    must reach it resolved."""
    monkeypatch.chdir(tmp_path)
    job = packer.PackerJob({"kind": "native", "image": "/dist/x.qcow2", "sha256": "ab" * 32},
                           tmp_path, Path("state/lab/id_ed25519"), "tcg", (1, 6, 6))
    assert f'ssh_private_key_file = "{tmp_path / "state/lab/id_ed25519"}"' in packer.render(spec, job)


def test_packer_1_6_gets_no_required_plugins_and_1_7_does(spec, tmp_path):
    assert "required_plugins" not in native(spec, (1, 6, 6), tmp_path)
    newer = native(spec, (1, 9, 4), tmp_path)
    assert "required_plugins" in newer and 'source  = "github.com/hashicorp/qemu"' in newer


def iso(spec, version, tmp_path, url="https://releases.example/noble.iso"):
    job = packer.PackerJob({"kind": "iso", "url": url, "sha256": "cd" * 32}, tmp_path, tmp_path / "k", "kvm", version)
    return packer.render(spec, job)


def test_iso_base_serves_autoinstall_types_the_boot_command_and_uploads_the_node_files(spec, tmp_path):
    hcl = iso(spec, (1, 11, 0), tmp_path)
    assert "disk_image" not in hcl and "memory = 3072" in hcl
    assert f'http_directory = "{tmp_path / "http"}"' in hcl
    assert "autoinstall ds=nocloud-net" in hcl and "{{ .HTTPIP }}" in hcl
    assert f'source      = "{tmp_path / "node-files.tar"}"' in hcl
    assert '"CLUSTEROS_BASE=iso"' in hcl and "clusteros-identity.service" in hcl and "apt-daily.timer" in hcl
    assert hcl.index('provisioner "file"') < hcl.index('provisioner "shell"'), "files first, then provision.sh"


def test_native_base_uploads_nothing(spec, tmp_path):
    hcl = native(spec, (1, 6, 6), tmp_path)
    assert 'provisioner "file"' not in hcl and '"CLUSTEROS_BASE=native"' in hcl


def test_autoinstall_user_data_has_the_user_keys_packages_and_no_password(spec):
    data = packer.autoinstall_user_data(spec, "ssh-ed25519 AAAATEST test", ["slurmd", "wireguard-tools"])
    assert "username: admin" in data and '"ssh-ed25519 AAAATEST test"' in data
    assert "allow-pw: false" in data and "NOPASSWD" in data
    assert '  packages:\n    - "slurmd"\n    - "wireguard-tools"\n' in data
    import yaml
    assert yaml.safe_load(data)["autoinstall"]["packages"] == ["slurmd", "wireguard-tools"]


def test_iso_base_is_for_ubuntu():
    from clusteros.spec import SpecError
    text = (b"cluster: {name: a}\nimage: {builder: packer, packer: {base: iso, iso_url: 'https://x/a.iso', "
            b"iso_sha256: " + b"a" * 64 + b"}}\n")
    with pytest.raises(SpecError, match="image.packer.base.*iso is Ubuntu's live-server autoinstall"):
        check_spec_data(text, "t", ROOT)
    check_spec_data(text.replace(b"image: {", b"image: {distro: ubuntu, "), "t", ROOT)


def test_version_parsing():
    assert packer.parse_version("Packer v1.6.6") == (1, 6, 6)
    assert packer.parse_version("Packer v1.11.2\n\nYour version is out of date") == (1, 11, 2)
    with pytest.raises(ClusterOSError, match="cannot read a Packer version"):
        packer.parse_version("command not found")


def test_iso_base_without_its_url_is_a_spec_error():
    from clusteros.spec import SpecError
    with pytest.raises(SpecError, match=r"image.packer \(line 2\): base: iso needs iso_url and iso_sha256"):
        check_spec_data(b"cluster: {name: a}\nimage: {builder: packer, packer: {base: iso}}\n", "t", ROOT)


@pytest.mark.needs("packer")
def test_installed_packer_accepts_the_template(spec, tmp_path):
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"")
    job = packer.PackerJob({"kind": "native", "image": str(base), "sha256": "ab" * 32}, tmp_path, tmp_path / "k",
                           "tcg", packer.installed_version())
    hcl = packer.render(spec, job)
    (tmp_path / "node.pkr.hcl").write_text(hcl)
    out = subprocess.run(["packer", "validate", "-syntax-only", "node.pkr.hcl"], cwd=tmp_path, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "CHECKPOINT_DISABLE": "1", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.needs("packer")
def test_iso_build_inputs_are_complete_and_the_installed_packer_fully_validates_them(tmp_path, monkeypatch):
    """Everything build_from_iso hands Packer, made for real; Packer checks it all but the boot itself
    (not syntax only: the QEMU builder's settings, the key, the http directory, the upload's source)."""
    import tarfile
    import yaml
    monkeypatch.setenv("CLUSTEROS_DIST", str(tmp_path / "dist"))
    sha = "a" * 64
    spec_file = tmp_path / "cluster.yaml"
    spec_file.write_text("cluster: {name: lab}\nimage: {distro: ubuntu, disk_size: 8G, packages: [htop], builder: packer,"
                         f" packer: {{base: iso, iso_url: 'file:///isos/noble.iso', iso_sha256: {sha}}}}}\n")
    spec = load_spec(spec_file)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "key"], check=True)
    (tmp_path / "noble.iso").write_bytes(b"an installer ISO")
    agent.build_pyz(ROOT / "node", tmp_path / "agent.pyz")
    work = tmp_path / "work"
    work.mkdir()
    inputs = ImageInputs(name="lab", image=spec["image"], node_spec=node_view(spec),
                         agent_pyz=tmp_path / "agent.pyz", owner_pubkey=tmp_path / "key.pub")
    job = packer.PackerJob({"kind": "iso", "url": str(tmp_path / "noble.iso"), "sha256": sha}, work, tmp_path / "key",
                           "tcg", packer.installed_version())
    hcl = packer.prepare_iso_build(spec, job, inputs)
    autoinstall = yaml.safe_load((work / "http" / "user-data").read_text())["autoinstall"]
    assert {"slurmd", "wireguard-tools", "linux-image-generic", "htop"} <= set(autoinstall["packages"])
    assert autoinstall["ssh"]["authorized-keys"] == [(tmp_path / "key.pub").read_text().strip()]
    with tarfile.open(work / "node-files.tar") as tar:
        names = tar.getnames()
        assert all(m.uid == 0 and m.gid == 0 for m in tar.getmembers())
    assert "." not in names and "./" not in names, "the tar must not carry a mode for /"
    assert {"etc/clusteros/spec.json", "etc/clusteros/owner.pub",
            "usr/local/lib/clusteros/node-agent/clusteros_node/agent.py",
            "etc/systemd/system/node-agent.service"} <= set(names)
    assert not [n for n in names if n.startswith(("etc/clusteros/cluster.secret", "var/lib/clusteros"))], \
        "the node files carry no secret"
    (work / "node.pkr.hcl").write_text(hcl)
    out = subprocess.run(["packer", "validate", "node.pkr.hcl"], cwd=work, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "CHECKPOINT_DISABLE": "1", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
