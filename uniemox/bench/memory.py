"""``launch/benchmark.py memory``: activation memory of the pretraining step per sample, with and
without activation checkpointing (``model.grad_checkpointing``), and the largest micro batch a
GPU of a given size holds.

Measured, not modelled: the student's step (both views through the encoder, the scene view
decoded, the reconstruction loss, the CLS projections, the fusion and the distillation losses) runs
on PyTorch's meta device (shapes only: no memory, no time) and every tensor autograd saves for the
backward is counted (``torch.autograd.graph.saved_tensors_hooks``). Per sample = the count at
batch 2 less the count at batch 1, so weights (saved by reference) cancel. The frozen teacher
saves nothing (inference mode); its outputs enter as [B, D] tensors.

With checkpointing a block keeps its input and recomputes the rest in the backward, so the peak
adds one block's activations back: peak per sample = saved with checkpointing + the largest
block's share of what is saved without it (encoder and decoder blocks alike, estimated as the
saved difference over the number of blocks).

The micro batch per GPU: (GPU memory - model states - reserve) / peak per sample, where the model
states of one rank are, per parameter: bf16 weights 2 B + fp32 master weights 4 B + fp32 gradients
4 B + AdamW's two fp32 moments 8 B = 18 B (ZeRO-2 over N ranks divides the last 12 B by N), plus
the teacher's bf16 weights; the reserve (allocator fragmentation, workspaces, the teacher's own
activations) is 10% of the GPU.
"""
import argparse
from typing import Dict, List

import torch

from uniemox.errors import UserError

from . import results, timing

COLUMNS = ("model", "img_size", "mask_ratio", "precision", "grad_checkpointing", "saved_mib_per_sample",
           "peak_mib_per_sample", "params_millions", "model_states_gib", "gpu_gib", "zero2_ranks",
           "max_micro_batch")
TEACHER_PARAMS = {"ViT-B-16": 149.6e6, "ViT-L-14": 427.6e6}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="uniemox_vit_base_patch16,uniemox_vit_large_patch16")
    parser.add_argument("--mask-ratio", default="0.75,0.9")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="the activations' dtype")
    parser.add_argument("--teacher", default="ViT-B-16", choices=sorted(TEACHER_PARAMS))
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="GPU memory for the micro-batch estimate")
    parser.add_argument("--zero2-ranks", type=int, default=8, help="ranks sharing the optimizer state (ZeRO-2)")
    parser.add_argument("--out", default=None, help="results JSON (CSV beside it; default "
                                                    "benchmarks/results/memory-<utc time>.json)")


def saved_bytes(model_name: str, batch: int, mask_ratio: float, dtype: torch.dtype, recompute: bool,
                proj_dim: int = 512) -> int:
    """Bytes autograd saves for the backward of one student step at ``batch`` (meta device)."""
    from uniemox.losses import distillation_losses
    from uniemox.models import create_pretrainer, get_arch

    size = get_arch(model_name).img_size
    with torch.device("meta"):
        model = create_pretrainer(model_name, proj_dim=proj_dim, mask_ratio=mask_ratio, attn_backend="math",
                                  kernel_impl="torch").to(dtype)
        model.model.set_grad_checkpointing(recompute)
        views = torch.empty(2, batch, 3, size, size, dtype=dtype)
        noise = torch.empty(2, batch, model.model.patch_embed.num_patches)
        teacher_image, teacher_text = torch.empty(batch, proj_dim), torch.empty(batch, proj_dim)
        counted: List[int] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: counted.append(t.nbytes) or t, lambda t: t):
            rec, _, _, alpha, beta = model.mae_with_person(views[0], views[1], noise[0], noise[1])
            sim, con = distillation_losses(model.fusion(alpha, beta), teacher_image, teacher_text, impl="torch")
            (rec + sim + con).sum()
    return sum(counted)


def measure(model_name: str, mask_ratio: float, precision: str, teacher: str, gpu_gib: float, ranks: int) -> List[Dict]:
    from uniemox.models import create_pretrainer, get_arch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    arch = get_arch(model_name)
    with torch.device("meta"):
        params = sum(p.numel() for p in create_pretrainer(model_name, proj_dim=512).parameters())
    per = {rc: saved_bytes(model_name, 2, mask_ratio, dtype, rc) - saved_bytes(model_name, 1, mask_ratio, dtype, rc)
           for rc in (False, True)}
    blocks = arch.depth + arch.decoder_depth
    one_block = (per[False] - per[True]) / blocks
    states = params * (6 + 12 / ranks) + TEACHER_PARAMS[teacher] * 2
    free = gpu_gib * 2 ** 30 * 0.9 - states
    rows = []
    for rc in (False, True):
        peak = per[rc] + (one_block if rc else 0.0)
        rows.append(dict(model=model_name, img_size=arch.img_size, mask_ratio=mask_ratio, precision=precision,
                         grad_checkpointing=rc, saved_mib_per_sample=per[rc] / 2 ** 20,
                         peak_mib_per_sample=peak / 2 ** 20, params_millions=params / 1e6,
                         model_states_gib=states / 2 ** 30, gpu_gib=gpu_gib, zero2_ranks=ranks,
                         max_micro_batch=int(free // peak)))
    return rows


def run(args: argparse.Namespace) -> Dict:
    try:
        ratios = [float(r) for r in str(args.mask_ratio).split(",")]
    except ValueError:
        raise UserError(f"--mask-ratio: comma-separated numbers, got {args.mask_ratio!r}") from None
    if any(not 0.0 < r < 1.0 for r in ratios) or args.gpu_gib <= 0 or args.zero2_ranks < 1:
        raise UserError("--mask-ratio in (0, 1), --gpu-gib > 0, --zero2-ranks >= 1")
    json_path, csv_path = results.results_paths("memory", "meta", args.out)
    payload = {"benchmark": "memory", "date": timing.utc_now(), "device": {"type": "meta", "name": "meta"},
               "versions": results.library_versions(), "method": __doc__.strip().split("\n\n", 1)[1],
               "run": {k: v for k, v in vars(args).items() if k not in ("func", "command")}, "rows": []}
    print(f"  {'model':<28}{'mask':>5}{'ckpt':>6}{'saved MiB/s':>12}{'peak MiB/s':>11}{'states GiB':>11}{'max batch':>10}")
    for model in str(args.model).split(","):
        for r in ratios:
            for row in measure(model.strip(), r, args.precision, args.teacher, args.gpu_gib, args.zero2_ranks):
                payload["rows"].append(row)
                print(f"  {row['model']:<28}{r:>5}{str(row['grad_checkpointing']):>6}"
                      f"{row['saved_mib_per_sample']:>12.1f}{row['peak_mib_per_sample']:>11.1f}"
                      f"{row['model_states_gib']:>11.2f}{row['max_micro_batch']:>10}")
    results.write_results(json_path, csv_path, payload, COLUMNS)
    print(f"[bench] results: {json_path}")
    return payload
