"""raw -> raw.gz: a series of gzip members that every gzip reader inflates back to the disk."""

import gzip
import hashlib
import subprocess

import pytest

from clusteros import convert
from clusteros.sparse import data_extents

from .test_installer import sparse_file


@pytest.fixture
def disk(tmp_path):
    # Data at the start, across a member boundary, and in a last member shorter than the others;
    # members 2 and 3 are holes only.
    member = convert.MEMBER
    return sparse_file(tmp_path / "disk.raw", 4 * member + 8192,
                       [(0, 4096), (member - 4096, 8192), (4 * member, 4096)])


def test_the_raw_gz_inflates_to_the_disk_with_pythons_gzip(disk, tmp_path):
    gz = tmp_path / "disk.raw.gz"
    convert.compress(disk, gz)
    assert gzip.decompress(gz.read_bytes()) == disk.read_bytes()
    digest, name = (tmp_path / "disk.raw.gz.sha256").read_text().split()
    assert (digest, name) == (hashlib.sha256(gz.read_bytes()).hexdigest(), "disk.raw.gz")


@pytest.mark.needs("pigz")
@pytest.mark.parametrize("reader", [["gzip", "-dc"], ["pigz", "-dc"]])
def test_the_raw_gz_inflates_to_the_disk_with_gzip_and_pigz(disk, tmp_path, reader):
    gz = tmp_path / "disk.raw.gz"
    convert.compress(disk, gz)
    assert subprocess.run([*reader, str(gz)], capture_output=True, check=True).stdout == disk.read_bytes()


def test_a_piece_with_no_data_is_the_one_member_of_zeros_and_is_not_read(disk):
    size = disk.stat().st_size
    with open(disk, "rb") as f:
        members = [m for _, m in convert.gzip_members(f.fileno(), size, data_extents(disk), workers=2)]
    assert len(members) == 5
    assert members[2] is members[3], "the hole's member is made once"
    assert gzip.decompress(members[2]) == bytes(convert.MEMBER)
    # Extents that say "no data" are believed: a piece outside them is zeros whatever the file holds.
    with open(disk, "rb") as f:
        blind = [m for _, m in convert.gzip_members(f.fileno(), size, [], workers=1)]
    assert gzip.decompress(b"".join(blind)) == bytes(size)
