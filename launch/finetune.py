"""UniEmoX fine-tuning and linear probing (METHOD §5), DeepSpeed like pretraining.

    deepspeed launch/finetune.py --deepspeed configs/zero2.json --init runs/sample/export   # sample set
    deepspeed launch/finetune.py --init runs/sample/export --linear-probe                    # MAE's probe
    deepspeed launch/finetune.py --data shards/fi --init export/ --label-fraction 0.1 \\
        model.name=uniemox_vit_large_patch16 data.batch_size=32
    deepspeed launch/finetune.py --data data/Emotion6 --dataset emotion6 --init export/   # image folder
    python launch/finetune.py --export runs/sample/export timm_encoder/                     # pretrained -> timm

Recipes: configs/finetune_release.yaml (the release's; the default) or configs/linear_probe_mae.yaml
(MAE's, --linear-probe); with no --data, the sample set's sizes on top (finetune_sample.yaml). Validation
after every epoch; the best weights go to RUN_DIR/best (timm layout: loadable with timm.create_model),
then the test split is scored. Metrics: RUN_DIR/eval/*.json, *.png, TensorBoard. The run is
uniemox.tasks.classify.ClassifyTask driven by uniemox.train.trainer.Trainer.
"""
from uniemox.launch.common import build_config, entry_point, parse, run_parser, train


def parse_args(argv=None):
    p = run_parser("uniemox-finetune", __doc__, "where logs, metrics, checkpoints and best/ go", "classify")
    p.add_argument("--data", help="shard-set folder, or a dataset folder/file make_shards reads "
                                  "(default: the embedded sample set)")
    p.add_argument("--dataset", help="split preset when --data is a dataset (emo8, fi, emotion6, ube, caer-s, heco)")
    p.add_argument("--init", help="pretrained encoder: pretraining export dir, .safetensors, MAE/release checkpoint")
    p.add_argument("--linear-probe", action="store_true", help="freeze the encoder, train the head (MAE recipe)")
    p.add_argument("--label-fraction", type=float, help="train on this class-stratified fraction (e.g. 0.1)")
    p.add_argument("--export", nargs=2, metavar=("SOURCE", "OUT_DIR"),
                   help="write a timm export (model.safetensors + config.json) of a pretraining export dir "
                        "or a fine-tuning run dir (its best/) and exit")
    args = parse(p, argv)
    args.linear_probe = "true" if args.linear_probe else None  # a flag given is an override
    return args


def config_of(args):
    from uniemox.config.classify import FinetuneConfig
    from uniemox.tasks.classify import ClassifyTask

    return build_config(FinetuneConfig, ClassifyTask, args, [
        ("data", "data.path"), ("dataset", "data.dataset"), ("init", "model.init"),
        ("label_fraction", "data.label_fraction"), ("linear_probe", "train.linear_probe")])


def main(argv=None):
    args = parse_args(argv)
    with entry_point():
        from uniemox.tasks.classify import ClassifyTask, export_classifier

        if args.export:
            export_classifier(*args.export)
        else:
            train(config_of(args), ClassifyTask, args)


if __name__ == "__main__":
    main()
