"""Train or adapt a CLIP teacher: contrastive image-text training (CLIP's symmetric InfoNCE with a
learned temperature) of an open_clip model on captioned shards (docs/method.md#pretraining captions built from each
sample's attributes and emotion), the scene view as the image.

    python launch/train_teacher.py                      # the tiny teacher on the embedded sample set
    deepspeed launch/train_teacher.py --deepspeed configs/zero2.json model.name=ViT-B-16-quickgelu \\
        model.weights=ViT-B-16.pt data.shards='/data/emo/train-{000000..000099}.tar' \\
        eval.shards='/data/emo/val-{000000..000009}.tar' optim.lr=1e-5 optim.max_steps=2000   # adapt
    python launch/train_teacher.py --export runs/teacher/checkpoints/step_00000400 teacher.safetensors

The result is a CLIP weights file for the pretraining teacher:
    deepspeed launch/pretrain.py ... teacher.model=NAME --teacher-weights runs/teacher/export/teacher.safetensors
With no data.shards, the sample recipe applies (configs/teacher_sample.yaml). The run is
uniemox.tasks.clip_teacher.TeacherTask driven by uniemox.train.trainer.Trainer.
"""
import json
import sys

from uniemox.claim import hold
from uniemox.launch.common import build_config, entry_point, parse, run_parser, train


def parse_args(argv=None):
    p = run_parser("uniemox-train-teacher", __doc__, "where logs, checkpoints and the exported weights go",
                   "clip_teacher")
    p.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "OUT_FILE"),
                   help="write the CLIP weights of a checkpoint as safetensors (+ .json card) and exit")
    return parse(p, argv)


def config_of(args):
    from uniemox.config.clip_teacher import TeacherTrainConfig
    from uniemox.tasks.clip_teacher import TeacherTask

    return build_config(TeacherTrainConfig, TeacherTask, args)


def main(argv=None):
    args = parse_args(argv)
    with entry_point():
        from uniemox.tasks.clip_teacher import TeacherTask, export_teacher_weights

        if args.export:
            with hold(args.export[1], "export"):
                card = export_teacher_weights(*args.export)
            print(json.dumps({k: card[k] for k in ("weights", "model", "bytes")}, indent=1))
            return
        argv = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--local_rank")]
        train(config_of(args), TeacherTask, args, command="python launch/train_teacher.py " + " ".join(argv))


if __name__ == "__main__":
    main()
