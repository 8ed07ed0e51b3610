"""Reader throughput benchmark (CPU figure): images/s of decoded, augmented two-view samples.

    python launch/bench_reader.py --sample --workers 1 --batches 20
    python launch/bench_reader.py "shards/train-{000000..000099}.tar" --workers 4
"""
import argparse
import json
import os
import sys

from uniemox.data.bench import measure_reader_throughput
from uniemox.data.manifest import shard_urls
from uniemox.data.sample import ensure_sample_shards
from uniemox.errors import UserError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("urls", nargs="*", help="shard files or brace patterns, or a shard folder (its train split)")
    p.add_argument("--sample", action="store_true", help="use the cached synthetic sample shards")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    args = p.parse_args(argv)
    try:
        if args.sample:
            urls = shard_urls(ensure_sample_shards(), ("train",))
        elif len(args.urls) == 1 and os.path.isdir(args.urls[0]):
            urls = shard_urls(args.urls[0], ("train",))
        elif args.urls:
            urls = args.urls
        else:
            raise UserError("give shard files, a shard folder or --sample")
        result = measure_reader_throughput(urls, args.workers, args.batches, args.batch_size, args.image_size)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"reader (CPU): {result['images_per_s']:.1f} images/s with {args.workers} worker(s), "
          f"{result['images_per_s_per_worker']:.1f} images/s per worker (two {args.image_size}px views each)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
