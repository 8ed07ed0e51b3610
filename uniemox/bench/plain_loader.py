"""The plain data pipeline ``benchmark.py loader`` measures the reader against: what a user would
write with webdataset and torchvision for the same two views, and nothing of this project's.

    webdataset.WebDataset(shards, resampled=True).shuffle(N).decode("pil")
    -> scene: v2.RandomResizedCrop(S, scale=(0.2, 1), bicubic) + RandomHorizontalFlip + PILToTensor
    -> person: the same on the crop of the sample's person box (the whole image without one)
    -> torch.utils.data.DataLoader(batch_size=B, num_workers=N) collates (scene, person, label)

It does less than the reader (no check of the sample's fields, no prompt, no skip counters, no
exact resume), so the ratio it gives is the cautious one for the reader.
"""
from typing import Dict, Iterator, Sequence

PLAIN = ("webdataset.WebDataset(shards, resampled=True).shuffle(100).decode('pil'); torchvision v2 "
         "RandomResizedCrop(S, scale=(0.2, 1), bicubic) + RandomHorizontalFlip + PILToTensor on the scene and on "
         "the person box's crop; DataLoader collation")


def plain_batches(urls: Sequence[str], batch: int, workers: int, image_size: int,
                  shuffle_buffer: int = 100) -> Iterator[Dict]:
    """Endless batches {scene, person: [B, 3, S, S] uint8, label: [B]} of the plain pipeline."""
    import webdataset as wds
    from torch.utils.data import DataLoader
    from torchvision.transforms import InterpolationMode, v2

    augment = v2.Compose([v2.RandomResizedCrop(image_size, scale=(0.2, 1.0), interpolation=InterpolationMode.BICUBIC),
                          v2.RandomHorizontalFlip(), v2.PILToTensor()])

    def views(sample: Dict) -> Dict:
        image, meta = sample["jpg"], sample["json"]
        box = meta.get("person_box")
        person = image.crop([round(v) for v in box]) if box else image
        return {"scene": augment(image), "person": augment(person), "label": meta["label"]}

    dataset = wds.WebDataset(list(urls), resampled=True, shardshuffle=False).shuffle(shuffle_buffer) \
        .decode("pil").map(views)
    return iter(DataLoader(dataset, batch_size=batch, num_workers=workers))
