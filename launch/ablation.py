"""The paper's ablation grid as one command (docs/method.md#losses and #fusion): loss subsets x fusion
variants, each cell pretrained, exported, and scored by fine-tuning, the probe grid (the head
validation chooses) and zero-shot.

    python launch/ablation.py --out runs/ablation                      # the whole grid, sample set, tiny
    python launch/ablation.py --out runs/ablation --losses l3,l3+l2+l1 --fusions none,easy
    python launch/ablation.py --out runs/emoset --data shards/emoset --pretrain-steps 20000 \\
        --num-gpus 8 --pretrain teacher.model=ViT-B-16-quickgelu teacher.weights=ViT-B-16.pt \
        model.name=uniemox_vit_base_patch16

Writes OUT/ablation.csv, OUT/ablation.md, OUT/ablation.png after every cell, and each cell's runs
and logs under OUT/<cell>/. The training stages (pretraining, fine-tuning, probe grid) run under
DeepSpeed's launcher with --num-gpus ranks (and any --launcher arguments: nodes, hostfile, port).
Run the same command again to continue a grid cut short: finished cells and finished stages are
kept, and a training stage cut short continues from its last checkpoint (--resume auto).
"""
import argparse
import shlex
import sys
from pathlib import Path

from uniemox.launch.common import entry_point


def parse_args(argv=None):
    from uniemox.experiments.ablation import FUSIONS, LOSSES

    p = argparse.ArgumentParser(prog="uniemox-ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the table, the plot and every cell's runs")
    p.add_argument("--losses", default=",".join(LOSSES), help=f"comma-separated: {', '.join(LOSSES)}")
    p.add_argument("--fusions", default=",".join(FUSIONS), help=f"comma-separated: {', '.join(FUSIONS)}")
    p.add_argument("--data", help="a shard-set folder (train/val/test); default: the embedded sample set")
    p.add_argument("--pretrain-steps", type=int, default=60)
    p.add_argument("--finetune-steps", type=int, default=40)
    p.add_argument("--probe-steps", type=int, default=40)
    p.add_argument("--pretrain", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of every pretraining run")
    p.add_argument("--downstream", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of every fine-tuning and probe run")
    p.add_argument("--num-gpus", type=int, help="ranks of every training stage on each node (DeepSpeed's "
                   "--num_gpus; default: the visible GPUs, 1 without a GPU)")
    p.add_argument("--launcher", default="", metavar="ARGS",
                   help="more DeepSpeed launcher arguments, one quoted string: "
                   "--launcher=\"--hostfile hosts --master_port 29600\"")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with entry_point():
        from uniemox.errors import UserError
        from uniemox.experiments.ablation import Settings, grid, run_grid, visible_gpus

        if min(args.pretrain_steps, args.finetune_steps, args.probe_steps) < 1:
            raise UserError("--pretrain-steps, --finetune-steps and --probe-steps must be at least 1")
        if args.num_gpus is not None and args.num_gpus < 1:
            raise UserError("--num-gpus must be at least 1")
        try:
            launcher = ["--num_gpus", str(args.num_gpus or visible_gpus())] + shlex.split(args.launcher)
        except ValueError as e:
            raise UserError(f"--launcher {args.launcher!r}: {e}") from None
        cells = grid([x for x in args.losses.split(",") if x], [x for x in args.fusions.split(",") if x])
        settings = Settings(args.data, args.pretrain_steps, args.finetune_steps, args.probe_steps, args.pretrain,
                            args.downstream, launcher)
        run_grid(cells, Path(args.out), settings,
                 progress=lambda i, c: print(f"[ablation] cell {i + 1}/{len(cells)}: {c.losses} x {c.fusion}",
                                             flush=True))
        print(f"[ablation] {Path(args.out) / 'ablation.md'}\n[ablation] {Path(args.out) / 'ablation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
