"""Shards made on the spot from real photos, for the GPU script's loader and pretraining steps:
the sample photos (uniemox.data.photos), each written ``--copies`` times, sharded by
launch/make_shards.py at ``--max-side`` px into one training split, without a person
detector (the GPU image has no mediapipe; a sample without a box uses the whole image as its
person view, the same decoding and augmentation work).

    python benchmarks/gpu/photo_shards.py WORK/shards --copies 64 --max-side 256 --shard-size 16
"""
import argparse
import shutil
import sys

from uniemox.data.photos import write_photos
from uniemox.launch.make_shards import main as make_shards


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="shard folder to create (replaced if it exists)")
    p.add_argument("--copies", type=int, default=64, help="files per photo")
    p.add_argument("--max-side", type=int, default=256, help="short side of the stored images")
    p.add_argument("--shard-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0, help="make_shards worker processes")
    args = p.parse_args(argv)
    photos = args.out.rstrip("/") + ".photos"
    for folder in (photos, args.out):
        shutil.rmtree(folder, ignore_errors=True)  # a rerun starts from nothing
    count = len(write_photos(photos, args.copies))
    print(f"{count} photos in {photos}")
    return make_shards([photos, args.out, "--split", "train", "--max-side", str(args.max_side),
                        "--shard-size", str(args.shard_size), "--detector", "none",
                        "--workers", str(args.workers), "--no-progress"])


if __name__ == "__main__":
    sys.exit(main())
