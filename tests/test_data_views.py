"""The reader's pixel path: one decode into a uint8 tensor, both views cut from it by torch's
bicubic kernel, and the option of decoding and cutting the batch on a device."""
import io
import json
import random
import tarfile

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from uniemox.data import build_pretrain_loader, ensure_sample_shards, shard_urls
from uniemox.data.images import decode_image, decode_image_tensor
from uniemox.data.transforms import TwoViewTransform, person_box_pixels, random_resized_crop_box


def _encoded(array, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo():
    return skimage.data.astronaut()  # 512 x 512 RGB, a person


def test_tensor_decode_has_the_pixels_of_decode_image(photo):
    gray16 = (skimage.data.camera().astype(np.uint16) * 257)
    for data in (_encoded(photo, "JPEG", quality=90), _encoded(photo[..., 0], "JPEG"),
                 _encoded(photo, "PNG"), _encoded(gray16, "PNG")):
        tensor = decode_image_tensor(data)
        assert tensor.dtype == torch.uint8 and tensor.permute(1, 2, 0).is_contiguous()  # H x W x 3 in memory
        assert np.array_equal(tensor.permute(1, 2, 0).numpy(), np.asarray(decode_image(data)))
    with pytest.raises(Exception):  # damaged: refused, as decode_image refuses it
        decode_image_tensor(_encoded(photo, "JPEG")[:3000])


def test_views_are_maes_random_resized_crop_of_the_same_draws(photo):
    """The draws of the views are those of the Pillow path before (crop box from the size, then the
    flip), and the pixels are MAE's RandomResizedCrop of that box (torchvision on a PIL image: the
    crop, then Pillow's BICUBIC resize) to within a level almost everywhere."""
    box = [150.3, 40.0, 330.9, 500.2]
    for image, size in ((Image.fromarray(photo), 96), (Image.fromarray(photo).resize((341, 256)), 224)):
        width, height = image.size
        diffs = []
        for seed in range(6):
            scene, person = TwoViewTransform(size)(image, box, random.Random(seed))
            rng = random.Random(seed)  # the draws, one by one
            for got, region in zip((scene, person), ((0, 0, width, height), person_box_pixels(width, height, box))):
                x0, y0, x1, y1 = region
                left, top, right, bottom = random_resized_crop_box(x1 - x0, y1 - y0, rng)
                want = image.crop((x0 + left, y0 + top, x0 + right, y0 + bottom)).resize((size, size), Image.BICUBIC)
                want = want.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else want
                diffs.append((got.permute(1, 2, 0).int() - torch.from_numpy(np.array(want)).int()).abs().flatten())
        diff = torch.cat(diffs)
        assert diff.max() <= 8 and (diff == 0).float().mean() > 0.97 and (diff <= 1).float().mean() > 0.9999


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return ensure_sample_shards(str(tmp_path_factory.mktemp("cache")), images_per_class_per_split=3, shard_size=3)


def _batches(loader, n):
    out, it = [], iter(loader)
    for _ in range(n):
        out.append(next(it))
    return out


def test_decode_device_cpu_gives_the_workers_batches_and_resumes(shards):
    kw = dict(urls=shard_urls(shards), batch_size=4, num_workers=2, image_size=32, shuffle_buffer=6, seed=3,
              resampled=True)
    reference = _batches(build_pretrain_loader(**kw), 6)
    first = build_pretrain_loader(**kw, decode_device="cpu")
    head = _batches(first, 3)
    state = json.loads(json.dumps(first.state_dict()))
    tail = _batches(build_pretrain_loader(**kw, decode_device="cpu", start_state=state), 3)
    for got, want in zip(head + tail, reference):
        assert sorted(got) == sorted(want)
        for name, value in want.items():
            assert torch.equal(got[name], value) if isinstance(value, torch.Tensor) else got[name] == value, name


def test_decode_device_counts_an_image_it_cannot_decode(shards, tmp_path):
    """A JPEG whose header reads but whose data is cut: the worker cannot tell, the device decode
    can; the sample leaves the batch and is counted, as the workers' own decoding counts it."""
    src, bad = shard_urls(shards)[0], tmp_path / "bad.tar"
    with tarfile.open(src) as tin, tarfile.open(bad, "w") as tout:
        damaged = None
        for member in tin.getmembers():
            data = tin.extractfile(member).read()
            if damaged is None and member.name.endswith(".jpg"):
                damaged, data = member.name.rsplit(".", 1)[0], data[:len(data) // 2]
            member.size = len(data)
            tout.addfile(member, io.BytesIO(data))
    keys, counts = {}, {}
    for device in (None, "cpu"):
        loader = build_pretrain_loader([str(bad)], batch_size=3, num_workers=0, image_size=32, shuffle_buffer=1,
                                       drop_last=False, decode_device=device)
        keys[device] = [k for batch in loader for k in batch["key"]]
        counts[device] = loader.skip_counts["corrupt_image"]
        assert damaged not in keys[device]
    assert keys[None] == keys["cpu"] and len(keys["cpu"]) == 2 and counts == {None: 1, "cpu": 1}


def test_decode_device_is_checked(shards):
    from uniemox.errors import UserError

    with pytest.raises(UserError, match="decode_device='tpu'"):
        build_pretrain_loader(shard_urls(shards), batch_size=2, num_workers=0, decode_device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            build_pretrain_loader(shard_urls(shards), batch_size=2, num_workers=0, decode_device="cuda")
