"""Convert an emotion dataset into WebDataset tar shards with person boxes and a manifest.

Each dataset is read as its download unpacks (docs/data.md has the exact command for each):

    python launch/make_shards.py data/EmoSet-118K shards/emoset              # info.json + splits
    python launch/make_shards.py data/EMOTIC shards/emotic                   # Annotations/ + emotic/
    python launch/make_shards.py data/Emotion6 shards/emotion6 --dataset emotion6
    python launch/make_shards.py data/UnBiasedEmo shards/ube --dataset ube
    python launch/make_shards.py data/CAER-S shards/caer-s --dataset caer-s  # train/ + test/
    python launch/make_shards.py data/FI shards/fi --dataset fi              # drawn 80/5/15 split
    python launch/make_shards.py list.csv shards/mine --classes a,b,c        # path,label[,box]
    python launch/make_shards.py --sample data/sample shards/sample          # synthetic demo data

Person boxes are found once, here: from the dataset's annotations where it has them,
else by --detector (mediapipe, torchvision or none). Bad input: one line, exit code 2.
"""
import argparse
import sys

from uniemox.claim import hold
from uniemox.data.catalog import FORMAT_HELP, FORMATS, open_source
from uniemox.data.detector import DETECTORS
from uniemox.data.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, set_max_image_pixels
from uniemox.data.sample import write_sample_dataset
from uniemox.data.splits import PRESETS
from uniemox.data.writer import write_shards
from uniemox.errors import UserError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("source", help="the dataset as downloaded: a folder, EMOTIC's .mat, a .json or .csv")
    p.add_argument("out", help="output folder for {split}-NNNNNN.tar and manifest.json (must be empty)")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="auto (default: told by the files) or " +
                        "; ".join(f"{k}: {v}" for k, v in FORMAT_HELP.items()))
    p.add_argument("--dataset", default=None,
                   help=f"preset (classes, label order, splits): {', '.join(PRESETS)}")
    p.add_argument("--classes", default=None,
                   help="comma-separated class names, in label order (a preset's classes are fixed)")
    p.add_argument("--image-root", default=None,
                   help="folder image paths are relative to (CSV, EMOTIC; default: where the download keeps them)")
    p.add_argument("--split", default=None, help="put every sample in this split (train, val or test)")
    p.add_argument("--split-ratios", default=None, help="train,val,test fractions for unsplit data")
    p.add_argument("--split-seed", type=int, default=None)
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--max-side", type=int, default=256,
                   help="resize so the short side is this (only when longer); 0 keeps originals")
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help=f"images declaring more pixels are skipped and counted as oversized_image, before "
                        f"decoding (default: ${MAX_PIXELS_ENV} or {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--detector", default="mediapipe", choices=DETECTORS)
    p.add_argument("--detector-weights", default=None, help="weights file of the torchvision detector")
    p.add_argument("--workers", type=int, default=None, help="worker processes (0: none; default: cores)")
    p.add_argument("--sample", action="store_true",
                   help="first write the SYNTHETIC sample dataset into SOURCE, then shard it")
    p.add_argument("--sample-per-class", type=int, default=32, help="images per class and split (--sample)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _ratios(text):
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--split-ratios must be three numbers like 0.8,0.1,0.1, got {text!r}") from None


def run(args: argparse.Namespace) -> dict:
    if args.max_image_pixels is not None:
        set_max_image_pixels(args.max_image_pixels)
    if args.sample:
        write_sample_dataset(args.source, args.sample_per_class)
        args.dataset = args.dataset or "emo8"
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    source = open_source(args.source, args.format, dataset=args.dataset, classes=classes,
                         ratios=_ratios(args.split_ratios), seed=args.split_seed, split=args.split,
                         image_root=args.image_root)
    return write_shards(source, args.out, shard_size=args.shard_size, max_side=args.max_side,
                        detector=args.detector, detector_weights=args.detector_weights,
                        num_workers=args.workers, progress=not args.no_progress)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        with hold(args.out, "make_shards"):
            run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
