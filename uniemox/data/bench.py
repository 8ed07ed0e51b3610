"""Reader throughput: decoded, augmented two-view samples per second (CPU figure)."""
import time
from typing import Dict, Sequence, Union

from .loader import build_pretrain_loader


def measure_reader_throughput(urls: Union[str, Sequence[str]], num_workers: int = 1, batches: int = 20,
                              batch_size: int = 32, image_size: int = 224, warmup: int = 2) -> Dict:
    """Time `batches` batches of the pretraining reader after `warmup` batches (worker start-up
    excluded). The reader runs resampled, so any number of shards works.
    Returns images/s in total and per worker (num_workers=0 counts the main process as one)."""
    loader = build_pretrain_loader(urls, batch_size, num_workers, image_size, shuffle_buffer=100,
                                   resampled=True, epoch_batches=warmup + batches)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        images += next(it)["scene"].shape[0]
    seconds = time.perf_counter() - start
    rate = images / seconds
    return {"images_per_s": rate, "images_per_s_per_worker": rate / max(1, num_workers),
            "num_workers": num_workers, "batch_size": batch_size, "image_size": image_size,
            "images": images, "seconds": seconds, "skipped": loader.skip_counts}
