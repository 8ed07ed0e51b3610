"""Real shards from real images, read back through the pipeline with 2 workers."""
import io
import json
import tarfile

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from uniemox.launch.make_shards import main as make_shards
from uniemox.data import build_pretrain_loader, load_manifest, shard_urls, verify_shards
from uniemox.data.photos import write_photos
from uniemox.data.prompts import build_prompt
from uniemox.data.transforms import crop_person


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory, mediapipe_detector):
    """person/{astronaut, grace_hopper}, thing/{chelsea, coffee} + one unreadable file, sharded
    with the mediapipe detector in 2 worker processes."""
    root = tmp_path_factory.mktemp("real")
    src = root / "src"
    write_photos(str(src))
    (src / "thing" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = root / "shards"
    rc = make_shards([str(src), str(out), "--split", "train", "--shard-size", "2", "--max-side", "200",
                      "--workers", "2", "--no-progress"])
    assert rc == 0
    return out


def test_manifest_counts_and_checksums(real_shards):
    m = load_manifest(str(real_shards))
    train = m["splits"]["train"]
    assert m["classes"] == ["person", "thing"]
    assert train["count"] == 4 and train["per_class"] == {"person": 2, "thing": 2}
    assert train["with_person_box"] == 2 and len(train["shards"]) == 2
    assert m["skipped"]["unreadable"] == 1 and "broken.jpg" in m["skipped"]["examples"][0]
    assert m["tool"]["detector"]["name"] == "mediapipe"
    assert verify_shards(str(real_shards)) == []
    with open(real_shards / "train-000001.tar", "r+b") as f:  # flip one byte: the check must notice
        f.seek(700)
        byte = f.read(1)
        f.seek(700)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert verify_shards(str(real_shards)) == ["train-000001.tar: checksum mismatch"]
    with open(real_shards / "train-000001.tar", "r+b") as f:
        f.seek(700)
        f.write(byte)


def _samples(shard_dir):
    out = {}
    for url in shard_urls(str(shard_dir)):
        with tarfile.open(url) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                out.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return out


def test_stored_samples_and_boxes(real_shards):
    samples = _samples(real_shards)
    assert sorted(samples) == ["person_astronaut", "person_grace_hopper", "thing_chelsea", "thing_coffee"]
    for key, s in samples.items():
        meta = json.loads(s["json"])
        img = Image.open(io.BytesIO(s["jpg"]))
        assert img.format == "JPEG" and min(img.size) == 200  # short side resized to --max-side
        assert meta["size"] == list(img.size) and meta["dataset"] == "custom"
        assert meta["label_name"] == key.split("_")[0] and meta["label"] == ("thing" in key)
        if key.startswith("person"):
            x0, y0, x1, y1 = meta["person_box"]
            assert meta["box_source"] == "mediapipe" and 0 <= x0 < x1 <= img.width and 0 <= y0 < y1 <= img.height
            assert (x1 - x0) * (y1 - y0) > 0.2 * img.width * img.height  # a person, not a speck
        else:
            assert meta["person_box"] is None
    # the astronaut's face (around x=250, y=150 of the 512 px original) lies inside her box
    x0, y0, x1, y1 = json.loads(samples["person_astronaut"]["json"])["person_box"]
    assert x0 < 250 * 200 / 512 < x1 and y0 < 150 * 200 / 512 < y1


def test_original_jpeg_kept_when_not_resized(tmp_path):
    src = tmp_path / "src" / "cat"
    src.mkdir(parents=True)
    Image.fromarray(skimage.data.chelsea()).save(src / "c.jpg", quality=90)
    assert make_shards([str(tmp_path / "src"), str(tmp_path / "out"), "--split", "train", "--max-side", "0",
                        "--detector", "none", "--workers", "0", "--no-progress"]) == 0
    stored = _samples(tmp_path / "out")["cat_c"]
    assert stored["jpg"] == (src / "c.jpg").read_bytes()
    assert json.loads(stored["json"])["box_source"] == "none"


def test_read_back_with_two_workers(real_shards):
    loader = build_pretrain_loader(shard_urls(str(real_shards)), batch_size=1, num_workers=2, image_size=64,
                                   shuffle_buffer=4, seed=3)
    seen = {}
    for batch in loader:
        assert batch["scene"].shape == batch["person"].shape == (1, 3, 64, 64)
        assert batch["scene"].dtype == batch["person"].dtype == torch.uint8  # normalised on the device
        assert batch["label"].dtype == torch.int64
        seen[batch["key"][0]] = (int(batch["label"][0]), batch["text"][0], bool(batch["has_person"][0]))
    assert seen == {"person_astronaut": (0, build_prompt("person"), True),
                    "person_grace_hopper": (0, build_prompt("person"), True),
                    "thing_chelsea": (1, build_prompt("thing"), False),
                    "thing_coffee": (1, build_prompt("thing"), False)}
    assert loader.skipped == 0


def test_person_view_is_the_box_crop(tmp_path):
    """Red person box on blue ground (edges on the JPEG 16-px grid): every pixel of every
    person view is red, whatever the crop; the box is scaled with the resize."""
    img = np.zeros((384, 512, 3), np.uint8)
    img[...] = (0, 0, 255)
    img[128:320, 128:256] = (255, 0, 0)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img).save(tmp_path / "b.png")
    (tmp_path / "list.csv").write_text("path,label,box\na.png,fear,128 128 256 320\nb.png,awe,\n")
    out = tmp_path / "out"
    assert make_shards([str(tmp_path / "list.csv"), str(out), "--split", "train", "--max-side", "192",
                        "--detector", "none", "--workers", "0", "--no-progress"]) == 0
    metas = {k: json.loads(v["json"]) for k, v in _samples(out).items()}
    assert metas["a"]["person_box"] == [64.0, 64.0, 128.0, 160.0] and metas["a"]["box_source"] == "annotation"
    assert metas["b"]["person_box"] is None
    loader = build_pretrain_loader(shard_urls(str(out)), batch_size=1, num_workers=0, image_size=48,
                                   shuffle_buffer=1)
    for _ in range(3):  # three epochs: three different random crops
        for batch in loader:
            person = batch["person"][0].float()
            if batch["key"][0] == "a":
                assert bool(batch["has_person"][0])
                # the resize blends the box's outermost pixel row/column with the ground, hence not min()
                assert (person[0] > 200).float().mean() > 0.97 and person[2].mean() < 15
            else:  # no box: the person view is drawn from the whole (blue) image
                assert person[2].mean() > 150
    box_crop = crop_person(Image.fromarray(img), [128.4, 127.6, 255.5, 320])
    assert box_crop.size == (128, 193)
    assert crop_person(Image.fromarray(img), None).size == (512, 384)


def _rewrite_shard(src, dst, edit):
    """Copy a tar member by member, letting `edit(name, data)` change the data."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin.getmembers():
            data = edit(member.name, tin.extractfile(member).read())
            member.size = len(data)
            tout.addfile(member, io.BytesIO(data))


def test_damaged_data_is_skipped_and_counted(real_shards, tmp_path):
    urls = shard_urls(str(real_shards))
    bad0, bad1, cut = tmp_path / "bad-0.tar", tmp_path / "bad-1.tar", tmp_path / "cut.tar"

    def corrupt_jpeg(name, data):  # a JPEG header followed by garbage
        return data[:20] + b"\x00" * 200 if name == "person_astronaut.jpg" else data

    def bad_json(name, data):
        return b"{not json" if name == "thing_chelsea.json" else data

    _rewrite_shard(urls[0], bad0, corrupt_jpeg)
    _rewrite_shard(urls[1], bad1, bad_json)
    with tarfile.open(urls[0]) as tar:  # truncate inside the second sample's image
        end = tar.getmembers()[2].offset_data + 10
    cut.write_bytes(open(urls[0], "rb").read()[:end])
    loader = build_pretrain_loader([str(bad0), str(bad1), str(cut)], batch_size=1, num_workers=2,
                                   image_size=32, shuffle_buffer=2, drop_last=False)
    keys = sorted(k for batch in loader for k in batch["key"])
    # bad0: grace_hopper ok; bad1: coffee ok; cut: only the first complete sample
    assert keys == ["person_astronaut", "person_grace_hopper", "thing_coffee"]
    counts = loader.skip_counts
    assert counts["corrupt_image"] == 1 and counts["bad_json"] == 1 and counts["truncated_shard"] == 1
    assert loader.skipped == 3
