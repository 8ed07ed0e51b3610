"""UniEmoX pretraining: MAE reconstruction + distillation from a frozen CLIP teacher.

  deepspeed launch/pretrain.py --deepspeed configs/zero2.json          # the embedded sample set
  deepspeed launch/pretrain.py --deepspeed configs/zero2.json --config configs/pretrain_emoset_vitl.yaml
      --teacher-weights ViT-B-16.pt data.shards='/data/emoset/train-{000000..000094}.tar'
  deepspeed --hostfile hosts --num_nodes 4 --num_gpus 8 launch/pretrain.py --deepspeed configs/zero2.json ...
  python launch/pretrain.py --resume auto ...                          # continue the run dir's latest
  python launch/pretrain.py --export runs/x/checkpoints/step_00001000 runs/x/export

With no data.shards, the sample recipe applies (configs/pretrain_sample.yaml). The run is
uniemox.tasks.pretrain.PretrainTask driven by uniemox.train.trainer.Trainer.
"""
from uniemox.claim import hold
from uniemox.launch.common import build_config, entry_point, parse, run_parser, train


def parse_args(argv=None):
    p = run_parser("uniemox-pretrain", __doc__, "where logs, reconstructions and checkpoints go", "pretrain")
    p.add_argument("--init", help="initialise from a facebookresearch/mae or UniEmoX release checkpoint")
    p.add_argument("--teacher-weights", help="CLIP weights file (OpenAI or open_clip layout)")
    p.add_argument("--export", nargs=2, metavar=("CHECKPOINT", "OUT_DIR"),
                   help="write fp32 safetensors of a checkpoint (also ZeRO-3) and exit")
    return parse(p, argv)


def config_of(args):
    from uniemox.config.pretrain import PretrainConfig
    from uniemox.tasks.pretrain import PretrainTask

    return build_config(PretrainConfig, PretrainTask, args, [("init", "model.init"),
                                                             ("teacher_weights", "teacher.weights")])


def main(argv=None):
    args = parse_args(argv)
    with entry_point():
        from uniemox.tasks.pretrain import PretrainTask, export_checkpoint

        if args.export:
            with hold(args.export[1], "export"):
                export_checkpoint(*args.export)
        else:
            train(config_of(args), PretrainTask, args)


if __name__ == "__main__":
    main()
