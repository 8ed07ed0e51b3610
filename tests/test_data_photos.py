"""The real sample photos written as an image folder (uniemox.data.photos)."""
import os

import pytest
from PIL import Image

from uniemox.data.photos import PHOTOS, write_photos


def test_each_photo_written_with_its_copies(tmp_path):
    paths = write_photos(str(tmp_path), copies=3)
    assert len(paths) == 3 * len(PHOTOS) == 12
    names = sorted(os.path.relpath(p, tmp_path) for p in paths)
    assert names[:3] == ["person/astronaut.png", "person/astronaut_001.png", "person/astronaut_002.png"]
    for rel in PHOTOS:
        stem, ext = os.path.splitext(tmp_path / rel)
        original = (tmp_path / rel).read_bytes()
        assert [open(f"{stem}_{i:03d}{ext}", "rb").read() == original for i in (1, 2)] == [True, True]
    with Image.open(tmp_path / "person" / "grace_hopper.jpg") as im:
        assert im.format == "JPEG" and im.size == (512, 600)
    with Image.open(tmp_path / "thing" / "chelsea.jpg") as im:  # re-encoded from the array: a real JPEG
        assert im.format == "JPEG" and im.size == (451, 300)


def test_copies_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="copies"):
        write_photos(str(tmp_path), copies=0)
