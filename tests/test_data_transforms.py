"""The views' pixel path: uint8 out of every reader, normalised on the device."""
import random

import pytest
import skimage.data
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from uniemox.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TwoViewTransform, ViewAugment,
                                     model_input, normalize, to_tensor)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(skimage.data.astronaut())


def test_two_views_are_uint8(image):
    scene, person = TwoViewTransform(48)(image, [100, 20, 300, 400], random.Random(0))
    assert scene.dtype == person.dtype == torch.uint8 and scene.shape == person.shape == (3, 48, 48)
    assert not torch.equal(scene, person)


@pytest.mark.parametrize("view", [ViewAugment(64), EvalTransform(64)], ids=["train", "eval"])
def test_device_normalisation_equals_the_float_path(image, view):
    raw = view(image, random.Random(5))
    assert raw.dtype == torch.uint8 and raw.shape == (3, 64, 64)
    pil = Image.fromarray(raw.permute(1, 2, 0).numpy())
    in_worker = to_tensor(pil)  # what a worker normalising the same crop would give
    on_device = model_input(raw[None], CPU, torch.float32)[0]
    assert on_device.dtype == torch.float32 and torch.equal(on_device, in_worker)
    # and both are torchvision's to_tensor + normalize of the same crop
    expected = TF.normalize(TF.to_tensor(pil), IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(on_device, expected, atol=1e-6, rtol=0)


def test_model_input_casts_and_passes_normalised_views_through(image):
    raw = torch.stack([ViewAugment(32)(image, random.Random(i)) for i in range(3)])
    bf16 = model_input(raw, CPU, torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and bf16.shape == (3, 3, 32, 32)
    torch.testing.assert_close(bf16.float(), normalize(raw), atol=2e-2, rtol=1e-2)
    normalised = normalize(raw)
    again = model_input(normalised, CPU, torch.float32)  # float views are not normalised twice
    assert torch.equal(again, normalised)


def test_normalize_refuses_float_views(image):
    with pytest.raises(TypeError, match="uint8"):
        normalize(to_tensor(image))
