"""UniEmoX fine-tuning and linear probing (docs/method.md#fine-tuning), DeepSpeed like pretraining.

    deepspeed launch/finetune.py --deepspeed configs/zero2.json --init runs/sample/export   # sample set
    deepspeed launch/finetune.py --init runs/sample/export --linear-probe                    # MAE's probe
    deepspeed launch/finetune.py --init runs/sample/export --probe-grid                      # a grid of probes
    deepspeed launch/finetune.py --init runs/sample/export train.ema=true                    # + model EMA
    deepspeed launch/finetune.py --data shards/fi --init export/ --label-fraction 0.1 \\
        model.name=uniemox_vit_large_patch16 data.batch_size=32
    deepspeed launch/finetune.py --data data/Emotion6 --dataset emotion6 --init export/   # image folder
    python launch/finetune.py --export runs/sample/export timm_encoder/                     # pretrained -> timm

Recipes: configs/finetune_release.yaml (the release's; the default) or configs/linear_probe_mae.yaml
(MAE's, --linear-probe; probe_grid.yaml on top with --probe-grid); with no --data, the sample set's sizes
on top (finetune_sample.yaml ...). Validation after every epoch; the best weights go to RUN_DIR/best
(timm's hub layout, written by timm's save_for_hf with a model card: timm.create_model('local-dir:...')),
then the test split is scored. Metrics: RUN_DIR/eval/*.json, *.png, TensorBoard. The run is
uniemox.tasks.classify.ClassifyTask (or tasks.probe_grid.ProbeGridTask) driven by uniemox.train.trainer.Trainer.
"""
from uniemox.claim import hold
from uniemox.launch.common import build_config, entry_point, parse, run_parser, train


def parse_args(argv=None):
    p = run_parser("uniemox-finetune", __doc__, "where logs, metrics, checkpoints and best/ go", "classify")
    p.add_argument("--data", help="shard-set folder, or a dataset folder/file make_shards reads "
                                  "(default: the embedded sample set)")
    p.add_argument("--dataset", help="split preset when --data is a dataset (emo8, fi, emotion6, ube, caer-s, heco)")
    p.add_argument("--init", help="pretrained encoder: pretraining export dir, .safetensors, MAE/release checkpoint")
    p.add_argument("--linear-probe", action="store_true", help="freeze the encoder, train the head (MAE recipe)")
    p.add_argument("--probe-grid", action="store_true",
                   help="a grid of linear probes (probe.blrs x probe.weight_decays) in one run; validation picks one")
    p.add_argument("--label-fraction", type=float, help="train on this class-stratified fraction (e.g. 0.1)")
    p.add_argument("--export", nargs=2, metavar=("SOURCE", "OUT_DIR"),
                   help="write a timm export (model.safetensors + config.json) of a pretraining export dir "
                        "or a fine-tuning run dir (its best/) and exit")
    args = parse(p, argv)
    args.linear_probe = "true" if args.linear_probe else None  # a flag given is an override
    args.probe_grid = "true" if args.probe_grid else None
    return args


def config_of(args):
    from uniemox.config.classify import FinetuneConfig
    from uniemox.tasks.classify import ClassifyTask

    return build_config(FinetuneConfig, ClassifyTask, args, [
        ("data", "data.path"), ("dataset", "data.dataset"), ("init", "model.init"),
        ("label_fraction", "data.label_fraction"), ("linear_probe", "train.linear_probe"),
        ("probe_grid", "train.probe_grid")])


def main(argv=None):
    args = parse_args(argv)
    with entry_point():
        from uniemox.finetune.export import export_classifier
        from uniemox.tasks.classify import ClassifyTask
        from uniemox.tasks.probe_grid import ProbeGridTask

        if args.export:
            with hold(args.export[1], "export"):
                export_classifier(*args.export)
        else:
            cfg = config_of(args)
            train(cfg, ProbeGridTask if cfg.train.probe_grid else ClassifyTask, args)


if __name__ == "__main__":
    main()
