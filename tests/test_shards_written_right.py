"""make_shards and the readers against what a cluster's folders really hold: a run killed half-way,
a full disk, names that collide, links that loop, images that declare gigabytes. Real tars, the
real reader, real processes."""
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from uniemox.data import build_labeled_loader, load_manifest, shard_urls, verify_shards
from uniemox.data.reader import expand_urls
from uniemox.errors import UserError
from uniemox.launch.make_shards import main as make_shards

from subprocesses import child_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAKE_SHARDS = os.path.join(REPO, "launch", "make_shards.py")
QUIET = ["--split", "train", "--detector", "none", "--workers", "0", "--no-progress"]


def _image(path, seed, size=32):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _dataset(root, per_class, size=32):
    for c, cls in enumerate(("calm", "joy")):
        for i in range(per_class):
            _image(root / cls / f"{i:04d}.png", c * 10000 + i, size)
    return root


def _read_keys(out):
    """Every sample the real reader yields from the set (evaluation order, one worker)."""
    loader = build_labeled_loader(str(out), batch_size=4, num_workers=0, image_size=32)
    keys = [k for batch in loader for k in batch["key"]]
    return keys, loader.skip_counts


def _run_make_shards(*args):
    return subprocess.run([sys.executable, MAKE_SHARDS, *map(str, args)], capture_output=True, text=True,
                          env=child_env(), timeout=600)


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and lines[-1].startswith("error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


# -- a run killed half-way ------------------------------------------------------------------------
def test_a_killed_make_shards_is_finished_by_rerunning_it(tmp_path):
    src, out = _dataset(tmp_path / "src", 150), tmp_path / "out"
    cmd = [sys.executable, MAKE_SHARDS, str(src), str(out), "--shard-size", "4", "--max-side", "0", *QUIET]
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "train-000005.tar").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "make_shards finished before it could be killed"
    assert (out / ".incomplete").exists()
    with pytest.raises(UserError, match="without manifest.json"):  # half a set is never read
        expand_urls(str(out))

    rerun = _run_make_shards(src, out, "--shard-size", "4", "--max-side", "0", *QUIET)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    manifest = load_manifest(str(out))
    assert manifest["total"] == 300 and verify_shards(str(out)) == []
    assert sorted(os.listdir(out)) == ["manifest.json"] + [f"train-{i:06d}.tar" for i in range(75)]
    keys, _ = _read_keys(out)
    assert len(keys) == len(set(keys)) == 300


def test_a_shard_cut_short_or_not_listed_is_refused(tmp_path):
    src, out = _dataset(tmp_path / "src", 4), tmp_path / "out"
    assert make_shards([str(src), str(out), "--shard-size", "2", *QUIET]) == 0
    with open(out / "train-000001.tar", "r+b") as f:
        f.truncate(1024)
    with pytest.raises(UserError, match="train-000001.tar: 1024 bytes, its manifest says"):
        expand_urls(str(out))
    with pytest.raises(UserError, match="its manifest says"):
        expand_urls(str(out / "train-{000000..000001}.tar"))
    os.replace(out / "train-000001.tar", out / "train-000009.tar")  # a shard the manifest does not list
    with pytest.raises(UserError, match="train-000009.tar: not listed in"):
        expand_urls(str(out / "train-000009.tar"))


# -- a full disk ----------------------------------------------------------------------------------
def test_a_full_disk_while_writing_shards_is_one_line_and_lists_nothing(tmp_path):
    src, disk = _dataset(tmp_path / "src", 40, size=96), tmp_path / "disk"  # ~2.2 MB of noise JPEGs
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        proc = _run_make_shards(src, disk / "out", "--shard-size", "8", "--max-side", "0", *QUIET)
        _one_line_error(proc, "the disk is full", "no manifest was written")
        left = sorted(os.listdir(disk / "out"))
        assert "manifest.json" not in left and not [n for n in left if n.endswith(".partial")]
        with pytest.raises(UserError):
            expand_urls(str(disk / "out"))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# -- names that collide ---------------------------------------------------------------------------
HOSTILE = ["a_b.jpg", "a_b.png", "a_b_1.jpg", "a.b.jpg", "a b.jpg", "a..b.jpg", "A_B.jpg", "été.jpg",
           "ÉTÉ.jpg", "ete.jpg", "t.jpg", "sample.jpg", "日本.jpg", "x.tar.gz.jpg", "a_b_1_1.jpg", "-.jpg"]


def test_every_hostile_name_is_one_sample_with_its_own_key(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for i, name in enumerate(HOSTILE):
        _image(src / "calm" / name, i)
    _image(src / "joy" / "a_b.jpg", 99)  # the same name in another class
    assert make_shards([str(src), str(out), "--shard-size", "5", *QUIET]) == 0
    manifest = load_manifest(str(out))
    assert manifest["total"] == len(HOSTILE) + 1
    keys, skips = _read_keys(out)
    assert len(keys) == manifest["total"] and not any(skips.values())
    assert len({k.casefold() for k in keys}) == len(keys) and not any("." in k for k in keys)
    members = [m.name for url in shard_urls(str(out)) for m in tarfile.open(url).getmembers()]
    assert len(members) == 2 * manifest["total"]  # one image and one json per key, nothing merged


# -- links in the dataset folder ------------------------------------------------------------------
def test_links_back_to_the_dataset_are_ignored_and_no_image_is_written_twice(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for cls, n in (("calm", 2), ("joy", 1)):
        for i in range(n):
            _image(src / cls / f"{i}.png", i + 10 * len(cls))
    os.symlink(src, src / "loop")                       # the root itself
    os.symlink(tmp_path, src / "up")                    # above the root
    os.symlink(src / "calm", src / "calm" / "again")    # a class folder inside itself
    os.symlink(src / "calm", src / "alias")             # another class's folder: its images once
    proc = _run_make_shards(src, out, "--shard-size", "10", "--detector", "none", "--workers", "0",
                            "--split", "train")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ignored" in proc.stderr and "loop" in proc.stderr
    manifest = load_manifest(str(out))
    assert manifest["classes"] == ["calm", "joy"] and manifest["total"] == 3
    assert manifest["splits"]["train"]["per_class"] == {"calm": 2, "joy": 1}
    assert manifest["skipped"]["linked_folder"] == 2 and manifest["skipped"]["duplicate_image"] == 2
    keys, _ = _read_keys(out)
    assert len(keys) == 3


# -- images that declare huge sizes ---------------------------------------------------------------
def png_declaring(path, width, height, bit_depth=16):
    """A grayscale PNG of zeros declaring width x height: a few hundred KB on disk."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    row = bytes(1 + width * bit_depth // 8)  # filter byte + the row's samples
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# The child's own peak: VmHWM belongs to the memory of the program the child runs, while ru_maxrss
# keeps the high-water mark of the process it was forked from (a pytest process of 1.9 GB late in
# the suite made every child "peak" at 1.9 GB).
MAXRSS_CHILD = """
{body}
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("MAXRSS_MB", int(hwm.split()[1]) // 1024)
"""


def _peak_mb(body, env=None):
    proc = subprocess.run([sys.executable, "-c", MAXRSS_CHILD.format(body=body)], capture_output=True, text=True,
                          env=child_env(env), timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.split("MAXRSS_MB")[-1]), proc


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    root = tmp_path_factory.mktemp("bomb")
    src = root / "src"
    (src / "calm").mkdir(parents=True)
    png_declaring(src / "calm" / "bomb.png", 12000, 12000, 16)
    png_declaring(src / "calm" / "bomb8.png", 12000, 12000, 8)
    _image(src / "calm" / "fine.png", 1)
    _image(src / "joy" / "fine.png", 2)
    return root


PEAK_LIMIT_MB = 900  # the process with torch imported is ~400 MB; one such decode costs 1.2-3.3 GB


def test_make_shards_refuses_an_image_by_its_declared_size(bomb):
    out = bomb / "shards"
    assert (bomb / "src" / "calm" / "bomb.png").stat().st_size < 400_000
    peak, proc = _peak_mb(f"from uniemox.launch.make_shards import main\n"
                          f"assert main([{str(bomb / 'src')!r}, {str(out)!r}, '--split', 'train', '--detector', "
                          f"'none', '--workers', '0']) == 0")
    assert peak < PEAK_LIMIT_MB, f"make_shards peaked at {peak} MB"
    manifest = load_manifest(str(out))
    assert manifest["total"] == 2 and manifest["skipped"]["oversized_image"] == 2
    assert "2 oversized image" in proc.stderr


def test_the_reader_and_predict_refuse_an_image_by_its_declared_size(bomb, tmp_path):
    shard = tmp_path / "bomb-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for key, path in (("bomb", bomb / "src" / "calm" / "bomb.png"), ("fine", bomb / "src" / "joy" / "fine.png")):
            for suffix, data in (("png", path.read_bytes()), ("json", json.dumps({"label": 0}).encode())):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, __import__("io").BytesIO(data))
    peak, proc = _peak_mb(f"from uniemox.data import build_labeled_loader\n"
                          f"loader = build_labeled_loader({str(shard)!r}, batch_size=1, num_workers=0, image_size=32,"
                          f" num_classes=2)\n"
                          f"keys = [k for b in loader for k in b['key']]\n"
                          f"assert keys == ['fine'] and loader.skip_counts['oversized_image'] == 1, "
                          f"(keys, loader.skip_counts)")
    assert peak < PEAK_LIMIT_MB, f"the reader peaked at {peak} MB"
    peak, proc = _peak_mb(f"from uniemox.eval.predict import load_views\n"
                          f"views = list(load_views([{str(bomb / 'src' / 'calm' / 'bomb8.png')!r}], 32))\n"
                          f"assert views[0].scene is None and 'OversizedImage' in views[0].error, views[0].error\n"
                          f"print(views[0].error)")
    assert peak < PEAK_LIMIT_MB, f"predict peaked at {peak} MB"
    assert "12000x12000" in proc.stdout and "UNIEMOX_MAX_IMAGE_PIXELS" in proc.stdout


def test_the_image_size_limit_can_be_set(tmp_path, monkeypatch):
    from uniemox.data.images import OversizedImage, decode_image

    _image(tmp_path / "a.png", 0, size=64)
    data = (tmp_path / "a.png").read_bytes()
    assert decode_image(data).size == (64, 64)
    monkeypatch.setenv("UNIEMOX_MAX_IMAGE_PIXELS", "4000")
    with pytest.raises(OversizedImage, match="64x64 = 4,096 pixels, over the limit of 4,000"):
        decode_image(data)
    out = tmp_path / "out"
    (tmp_path / "src" / "calm").mkdir(parents=True)
    os.replace(tmp_path / "a.png", tmp_path / "src" / "calm" / "a.png")
    _image(tmp_path / "src" / "calm" / "b.png", 1, size=32)
    assert make_shards([str(tmp_path / "src"), str(out), "--max-image-pixels", "5000", *QUIET]) == 0
    assert load_manifest(str(out))["skipped"]["oversized_image"] == 0  # the flag raised the limit
    monkeypatch.setenv("UNIEMOX_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(UserError, match="UNIEMOX_MAX_IMAGE_PIXELS must be a positive number"):
        decode_image(data)
