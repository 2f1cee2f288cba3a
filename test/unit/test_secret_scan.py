"""The artifact scanner the e2e tests trust to say "no secret here" must find one wherever it hides."""

import gzip
import subprocess
import zlib

import pytest

from ..secret_scan import CHUNK, Needles, Scan, scan

SECRET = b"0123456789abcdef" * 4
NEEDLES = Needles.for_secret("secret", SECRET)


def test_a_clean_file_has_no_findings(tmp_path):
    (tmp_path / "clean").write_bytes(b"nothing here" * 1000)
    assert scan([tmp_path / "clean"], NEEDLES).findings == []


def test_a_secret_far_into_a_sparse_disk_across_a_chunk_boundary_is_found(tmp_path):
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(3 * 2**30)
        f.seek(2**30)   # data well after a hole, the secret split over its first two chunks
        f.write(b"x" * (CHUNK - 10) + SECRET.hex().encode())
    found = scan([disk], NEEDLES)
    assert found.findings == [f"{disk} @{2**30}: secret (hex)"]
    assert found.read_bytes < 2 * CHUNK, "holes are not read"


def test_a_secret_in_a_gzip_stream_is_found_and_one_file_is_decompressed_once(tmp_path):
    packed = tmp_path / "data.gz"
    packed.write_bytes(gzip.compress(b"a" * 5000 + SECRET + b"b" * 5000))
    copy = tmp_path / "copy.gz"
    copy.write_bytes(packed.read_bytes())
    assert scan([packed, copy], NEEDLES).findings == [f"{packed} (decompressed): secret"]


def test_a_gzip_of_many_members_is_read_whole_and_a_repeated_member_of_zeros_is_not_inflated_again(
        tmp_path, monkeypatch):
    """As clusteros.convert writes raw.gz: one member per piece of the disk, the same member for every
    piece of holes. A needle that begins with zeros, right after such a member, is still found."""
    inflated = []
    inflate = Scan._gzip_member
    monkeypatch.setattr(Scan, "_gzip_member", lambda self, data, at, *rest: inflated.append(at)
                        or inflate(self, data, at, *rest))
    zeros = gzip.compress(bytes(2 * CHUNK), mtime=0)     # members bigger than a chunk, as there
    starts_with_zeros = Needles({"zero-led": b"\0\0\0" + SECRET})
    packed = tmp_path / "disk.raw.gz"
    members = [zeros, gzip.compress(b"a" * (CHUNK + 100) + SECRET), zeros, zeros,
               gzip.compress(SECRET + b"\0" * 10), zeros, gzip.compress(b"b" * 10)]
    packed.write_bytes(b"".join(members) + bytes(512))     # and zero padding after the last member
    found = scan([packed], NEEDLES | starts_with_zeros)
    assert set(found.findings) == {f"{packed} (decompressed): secret", f"{packed} (decompressed): zero-led"}
    assert found.read_bytes == 8 * CHUNK + CHUNK + 100 + 2 * len(SECRET) + 10 + 10, "every byte, counted"
    assert len(inflated) == 4, "the member of zeros inflated once, then recognised three times"


def test_a_secret_across_a_repeated_member_too_short_to_hold_it_is_found(tmp_path):
    empty = gzip.compress(b"", mtime=0)
    half = len(SECRET) // 2
    packed = tmp_path / "split.gz"
    packed.write_bytes(empty + gzip.compress(b"x" + SECRET[:half]) + empty + gzip.compress(SECRET[half:] + b"y"))
    assert scan([packed], NEEDLES).findings == [f"{packed} (decompressed): secret"]

    packed.write_bytes(packed.read_bytes() + b"garbage")    # not a member, not padding
    with pytest.raises(zlib.error):
        scan([packed], NEEDLES)

    packed.write_bytes(empty + gzip.compress(b"x" * 1000)[:-12])   # cut short inside its last member
    with pytest.raises((ValueError, zlib.error)):
        scan([packed], NEEDLES)


@pytest.mark.needs("zstd")
def test_a_secret_in_a_zstd_stream_is_found(tmp_path):
    """The installers' image data is zstd (clusteros.installer.payload)."""
    plain = tmp_path / "data"
    plain.write_bytes(b"a" * (CHUNK + 5000) + SECRET.hex().encode() + b"b" * 5000)
    subprocess.run(["zstd", "-q", str(plain), "-o", str(tmp_path / "data.zst")], check=True)
    plain.unlink()
    found = scan([tmp_path / "data.zst"], NEEDLES)
    assert found.findings == [f"{tmp_path / 'data.zst'} (decompressed): secret (hex)"]
    assert found.read_bytes == CHUNK + 5000 + 2 * len(SECRET) + 5000, "all of it, decompressed"


@pytest.mark.needs("xorriso", "zstd")
def test_a_secret_inside_a_compressed_file_of_an_iso_is_found(tmp_path):
    medium = tmp_path / "medium"
    (medium / "boot").mkdir(parents=True)
    (medium / "boot" / "initrd.img").write_bytes(gzip.compress(b"cpio " + SECRET + b" more"))
    (medium / "clusteros").mkdir()
    subprocess.run(["zstd", "-q", "-o", str(medium / "clusteros" / "image.data.zst")], input=b"data " + SECRET,
                   check=True)
    iso = tmp_path / "x.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-o", str(iso), str(medium)], check=True, capture_output=True)
    found = scan([iso], NEEDLES).findings
    assert found == [f"{iso}:boot/initrd.img (decompressed): secret",
                     f"{iso}:clusteros/image.data.zst (decompressed): secret"], found


def test_a_private_key_is_known_by_a_line_of_its_body(tmp_path):
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    needles = Needles.for_private_key("test key", key)
    (tmp_path / "leak").write_bytes(b"junk\n" + key.read_bytes())
    (tmp_path / "pub").write_bytes((tmp_path / "id.pub").read_bytes())
    assert scan([tmp_path / "leak", tmp_path / "pub"], needles).findings == [f"{tmp_path / 'leak'} @0: test key"]


def test_a_secret_that_ends_in_zeros_just_before_a_chunk_of_zeros_is_found(tmp_path):
    """Runs of zeros are not searched; a needle reaching into one still is found."""
    raw_secret = b"\x5a" * 30 + b"\0\0"
    needles = Needles.for_secret("secret", raw_secret)
    packed = tmp_path / "disk.raw.gz"
    packed.write_bytes(gzip.compress(b"z" * (CHUNK - 30) + raw_secret[:30] + bytes(3 * CHUNK)))
    found = scan([packed], needles)
    assert found.findings == [f"{packed} (decompressed): secret"]
    assert found.read_bytes == 4 * CHUNK
    with pytest.raises(AssertionError, match="zeros"):
        Needles({"empty key": bytes(32)})
