"""Emotions of images: top-k from a fine-tuned model, or zero-shot from a pretrained student.

    python launch/predict.py --model runs/sample-finetune/best photo.jpg photos/       # fine-tuned
    python launch/predict.py --model best/ photo.jpg --person-view --format json       # + person crop
    python launch/predict.py --zero-shot runs/sample/export photo.jpg                  # no fine-tuning
    python launch/predict.py --zero-shot runs/sample/export --eval shards/emo8 --split test
    python launch/predict.py --model best/ --eval shards/emo8 --split test --out eval_test/

--model: a fine-tuning run's best/ (or any export in timm's layout). --zero-shot: a pretraining
export (launch/pretrain.py --export): the student's fused token is scored against the teacher's
text embeddings of "The overall emotion conveyed is {class}." (the teacher of the pretraining
run, or --teacher-weights). --eval: metrics on a split of a labelled shard set instead of files
(zero-shot takes the person view from the stored boxes). Bad input: one line, exit code 2.
"""
import argparse
import json
import logging
import sys

import torch

from uniemox.errors import UserError


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


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if bool(args.images) == bool(args.eval):
            raise UserError("give image files/folders, or --eval SHARDS (one of the two)")
        if args.top_k < 1:
            raise UserError(f"--top-k must be >= 1, got {args.top_k}")
        run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


def build_model(args, device, class_names=None):
    """-> (score(scene, person, has_person) -> probabilities, class names, image size, multi_label)."""
    from uniemox.data import MIKELS_EMOTIONS

    if args.model:
        from uniemox.eval.predict import classifier_scorer
        from uniemox.models.timm_models import create_from_export

        model, config = create_from_export(args.model)
        if not config["num_classes"]:
            raise UserError(f"{args.model} is an encoder without a classification head: fine-tune it first "
                            f"(launch/finetune.py), or use --zero-shot with a pretraining export")
        model.to(device)
        multi = config["uniemox"].get("task") == "multi_label"
        names = config.get("label_names") or [str(i) for i in range(config["num_classes"])]
        size = config["pretrained_cfg"]["input_size"][-1]
        return classifier_scorer(model, device, multi, args.person_view), names, size, multi
    from uniemox.eval.zeroshot import build_zero_shot, image_size_of

    names = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else \
        list(class_names or MIKELS_EMOTIONS)
    model, run_config = build_zero_shot(args.zero_shot, names, device, args.teacher_model, args.teacher_weights,
                                        args.teacher_pretrained)

    def score(scene, person, has_person):
        use_person = args.person_view or args.eval
        return torch.softmax(model(scene.to(device), person.to(device) if use_person else None), dim=-1)
    return score, names, image_size_of(run_config), False


@torch.no_grad()
def run(args) -> None:
    torch.manual_seed(0)  # the same output for the same input, also with a random test teacher
    device = torch.device(args.device)
    if args.eval:
        return evaluate_shards(args, device)
    from uniemox.data.detector import build_detector
    from uniemox.eval.predict import format_table, list_images, load_views, predict_views

    paths = list_images(args.images)
    score, names, size, _ = build_model(args, device)
    detector = build_detector(args.detector, args.detector_weights) if args.person_view else None
    views = list(load_views(paths, size, detector))
    results = predict_views(score, views, names, args.top_k, args.batch_size)
    print(json.dumps(results, indent=1) if args.format == "json" else format_table(results))


def evaluate_shards(args, device) -> None:
    from uniemox.data import load_manifest, shard_urls
    from uniemox.eval.evaluate import Predictions
    from uniemox.eval.report import format_summary, write_report
    from uniemox.eval.shard_views import iter_view_batches

    manifest = load_manifest(args.eval)
    classes = manifest["classes"]
    score, names, size, multi = build_model(args, device, classes)
    if len(names) != len(classes):
        raise UserError(f"the model has {len(names)} classes, the shard set {len(classes)}")
    keys, scores, labels = [], [], []
    for batch in iter_view_batches(shard_urls(args.eval, (args.split,)), size, args.batch_size,
                                   num_classes=len(classes) if multi else None):
        has = batch["has_person"] if (args.person_view or args.zero_shot) else torch.zeros_like(batch["has_person"])
        scores.append(score(batch["scene"], batch["person"], has).float().cpu())
        labels.append(batch["targets"] if multi else batch["label"])
        keys += batch["key"]
    if not keys:
        raise UserError(f"no readable sample in split {args.split!r} of {args.eval}")
    pred = Predictions(keys, torch.cat(scores).numpy(), torch.cat(labels).numpy())
    metrics = pred.metrics(classes, multi)
    metrics["mode"] = "zero_shot" if args.zero_shot else "model"
    if args.out:
        paths = write_report(metrics, args.out, args.split, predictions=pred.rows(classes, args.top_k, multi),
                             echo=False)
        print(json.dumps(paths), file=sys.stderr)
    if args.format == "json":
        print(json.dumps(metrics, indent=1))
    else:
        print(format_summary(metrics, f"== {'zero-shot' if args.zero_shot else 'model'}: {args.eval} [{args.split}] =="))


if __name__ == "__main__":
    sys.exit(main())
