"""The reader's own tar parsing (tarstream.tar_members) against Python's tarfile, on every tar
format tarfile writes, compressed, and damaged."""
import gzip
import io
import tarfile

import pytest

from uniemox.data.tarstream import tar_members

NAMES = ["a" * 90 + ".jpg", "dir/" + "b" * 120 + "/x.json", "__meta__/notes.txt"]
LONG = ["ünï code.json", "c" * 130 + ".png"]  # past ustar's 100 + 155 bytes, or not ASCII


def _tar(fmt, names):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            data = bytes([i]) * (700 + i)  # past one block: padded
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    return buf.getvalue()


def _tarfile_members(raw):
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()
                if m.isreg() and not m.name.startswith("__meta__")]


@pytest.mark.parametrize("fmt,names", [(tarfile.USTAR_FORMAT, NAMES), (tarfile.GNU_FORMAT, NAMES + LONG),
                                       (tarfile.PAX_FORMAT, NAMES + LONG)], ids=["ustar", "gnu", "pax"])
def test_members_are_tarfiles(fmt, names):
    raw = _tar(fmt, names)
    expected = _tarfile_members(raw)
    assert len(expected) == len(names) - 1  # webdataset's __meta__ members are not samples
    assert list(tar_members(io.BytesIO(raw))) == expected
    assert list(tar_members(io.BytesIO(gzip.compress(raw)))) == expected  # compressed: through tarfile


def test_damage_raises():
    raw = _tar(tarfile.PAX_FORMAT, NAMES)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        second = tar.getmembers()[1]  # its pax header, then its own header, then its data
    with pytest.raises(tarfile.ReadError, match="empty"):
        list(tar_members(io.BytesIO(b"")))
    got = []
    with pytest.raises(tarfile.ReadError, match="end of data"):  # cut inside the second member's data
        for name, _ in tar_members(io.BytesIO(raw[:second.offset_data + 100])):
            got.append(name)
    assert got == [NAMES[0]]
    flipped = bytearray(raw)
    flipped[second.offset + 10] ^= 0xFF  # a byte of the second member's first header: its checksum fails
    got = []
    with pytest.raises(tarfile.ReadError, match="header"):
        for name, _ in tar_members(io.BytesIO(bytes(flipped))):
            got.append(name)
    assert got == [NAMES[0]]
