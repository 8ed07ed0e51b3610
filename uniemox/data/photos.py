"""Real photographs, offline: the sample photos that ship inside scikit-image and matplotlib,
written as a class-folder image tree for tests and benchmarks that need real photo content
(camera noise, JPEG statistics, a person to detect) where nothing can be downloaded.

    person/astronaut.png     skimage.data.astronaut()   512 x 512 (width x height), a person
    person/grace_hopper.jpg  matplotlib's sample JPEG   512 x 600, a person
    thing/chelsea.jpg        skimage.data.chelsea()     451 x 300, a cat
    thing/coffee.png         skimage.data.coffee()      600 x 400, a cup

Needs scikit-image and matplotlib (the ``dev`` extra; both are on the GPU image).
"""
import os
import shutil
from typing import Callable, Dict, List

from PIL import Image


def _skimage(name: str) -> Callable[[str], None]:
    def save(path: str) -> None:
        import skimage.data

        image = Image.fromarray(getattr(skimage.data, name)())
        image.save(path, **({"quality": 95} if path.endswith(".jpg") else {}))
    return save


def _grace_hopper(path: str) -> None:
    from matplotlib import cbook

    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), path)  # the original JPEG bytes


PHOTOS: Dict[str, Callable[[str], None]] = {
    "person/astronaut.png": _skimage("astronaut"),
    "person/grace_hopper.jpg": _grace_hopper,
    "thing/chelsea.jpg": _skimage("chelsea"),
    "thing/coffee.png": _skimage("coffee"),
}


def write_photos(root: str, copies: int = 1) -> List[str]:
    """Write every photo of ``PHOTOS`` under ``root`` (``copies`` files each: the original name,
    then NAME_001, NAME_002, ... with the same bytes, for data sets larger than four images);
    returns the paths written."""
    if copies < 1:
        raise ValueError(f"copies must be positive, got {copies}")
    paths = []
    for rel, save in PHOTOS.items():
        first = os.path.join(root, rel)
        os.makedirs(os.path.dirname(first), exist_ok=True)
        save(first)
        stem, ext = os.path.splitext(first)
        extra = [f"{stem}_{i:03d}{ext}" for i in range(1, copies)]
        for path in extra:
            shutil.copyfile(first, path)
        paths += [first] + extra
    return paths
