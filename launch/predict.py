"""Emotions of images: top-k from a fine-tuned model, or zero-shot from a pretrained student.

    python launch/predict.py --model runs/sample-finetune/best photo.jpg photos/       # fine-tuned
    python launch/predict.py --model best/ photo.jpg --person-view --format json       # + person crop
    python launch/predict.py --zero-shot runs/sample/export photo.jpg                  # no fine-tuning
    python launch/predict.py --zero-shot runs/sample/export --eval shards/emo8 --split test
    python launch/predict.py --zero-shot runs/sample/export --templates emotion photo.jpg  # prompt ensemble
    python launch/predict.py --model best/ --eval shards/emo8 --split test --out eval_test/

--model: a fine-tuning run's best/ (or any export in timm's layout). --zero-shot: a pretraining
export (launch/pretrain.py --export): the student's fused token is scored against the teacher's
text embeddings of "The overall emotion conveyed is {class}." (the teacher of the pretraining
run, or --teacher-weights); --templates emotion scores each class by the normalised mean of 8
phrasings' embeddings (open_clip's zero-shot classifier), --templates FILE by one template a line.
--eval: metrics on a split of a labelled shard set instead of files (zero-shot takes the person
view from the stored boxes). Bad input: one line, exit code 2.
"""
import argparse
import json
import sys

import torch

from uniemox.launch.common import entry_point


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="uniemox-predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", help="image files or folders (searched recursively)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="fine-tuned model folder (RUN_DIR/best)")
    src.add_argument("--zero-shot", metavar="PRETRAIN_EXPORT", help="pretraining export folder")
    p.add_argument("--classes", help="comma-separated class names for --zero-shot (default: the shard set's "
                                     "classes with --eval, else the 8 Mikels emotions)")
    p.add_argument("--teacher-weights", help="CLIP weights file for the text side of --zero-shot")
    p.add_argument("--teacher-model", help="open_clip model name of the teacher (default: the pretraining run's)")
    p.add_argument("--teacher-pretrained", help="open_clip pretrained tag of the teacher")
    p.add_argument("--templates", help="prompt templates of --zero-shot: method (default: the caption "
                                       "template's emotion sentence), emotion (a prompt ensemble), or a file "
                                       "(one template a line, {} for the class)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--person-view", action="store_true", help="also score the detector's crop of the main person")
    p.add_argument("--detector", default="mediapipe", choices=("mediapipe", "torchvision"))
    p.add_argument("--detector-weights", help="weights file of the torchvision detector")
    p.add_argument("--eval", metavar="SHARDS", help="score a split of a labelled shard set (manifest folder)")
    p.add_argument("--split", default="test", help="split for --eval (default: test)")
    p.add_argument("--out", help="folder for --eval's metrics JSON, confusion PNG and predictions")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_intermixed_args(argv)


def scorer_of(args, device):
    from uniemox.data import MIKELS_EMOTIONS, load_manifest
    from uniemox.data.prompts import load_templates
    from uniemox.errors import UserError
    from uniemox.eval.scorers import classifier_scorer, zero_shot_scorer

    if args.model:
        if args.templates:
            raise UserError("--templates applies to --zero-shot only")
        return classifier_scorer(args.model, device, args.person_view)
    templates = load_templates(args.templates or "method")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else \
        list(load_manifest(args.eval)["classes"] if args.eval else MIKELS_EMOTIONS)
    return zero_shot_scorer(args.zero_shot, classes, device, args.person_view or bool(args.eval),
                            args.teacher_model, args.teacher_weights, args.teacher_pretrained, templates)


@torch.no_grad()
def run(args) -> None:
    from uniemox.errors import UserError

    if bool(args.images) == bool(args.eval):
        raise UserError("give image files/folders, or --eval SHARDS (one of the two)")
    if args.top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    torch.manual_seed(0)  # the same output for the same input, also with a random test teacher
    device = torch.device(args.device)
    if not args.eval:
        from uniemox.eval.predict import list_images
        paths = list_images(args.images)  # a missing file is reported before any model is loaded
    scorer = scorer_of(args, device)
    if args.eval:
        from uniemox.eval.evaluate import evaluate_split
        from uniemox.eval.report import format_summary

        metrics = evaluate_split(scorer, args.eval, args.split, args.batch_size, args.top_k, args.out)
        if args.out:
            print(json.dumps(metrics.pop("report")), file=sys.stderr)
        print(json.dumps(metrics, indent=1) if args.format == "json" else format_summary(
            metrics, f"== {'zero-shot' if scorer.zero_shot else 'model'}: {args.eval} [{args.split}] =="))
        return
    from uniemox.data.detector import build_detector
    from uniemox.eval.predict import format_table, load_views, predict_views

    detector = build_detector(args.detector, args.detector_weights) if args.person_view else None
    views = list(load_views(paths, scorer.image_size, detector))
    results = predict_views(scorer.score, views, scorer.classes, args.top_k, args.batch_size)
    print(json.dumps(results, indent=1) if args.format == "json" else format_table(results))


def main(argv=None) -> int:
    args = parse_args(argv)
    with entry_point(progress_log=False):
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
