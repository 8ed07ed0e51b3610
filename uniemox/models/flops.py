"""Analytic FLOP counts (a multiply-add = 2 FLOPs) for MFU and the benchmark.

Per transformer block on N tokens of width D (MLP ratio m): the linear layers cost
2 N D^2 (3 + 1 + 2m) and the attention products 4 N^2 D. Training costs 3x the forward
(forward + backward) for trained parts, 1x for the frozen teacher.
Check: ViT-B/16 forward at 224 = 35.1 GFLOPs; MAE-B at mask 0.75 trains at 58.7 GFLOPs/image.
"""
from dataclasses import dataclass

from .mae import num_kept
from .registry import Arch


def transformer_flops(tokens: int, width: int, depth: int, mlp_ratio: float = 4.0) -> float:
    per_block = 2 * tokens * width * width * (4 + 2 * mlp_ratio) + 4 * tokens * tokens * width
    return depth * per_block


def vit_forward_flops(arch: Arch) -> float:
    """The full (unmasked) encoder forward on one image, patch embedding included."""
    patches = (arch.img_size // arch.patch_size) ** 2
    embed = 2 * patches * 3 * arch.patch_size ** 2 * arch.embed_dim
    return embed + transformer_flops(patches + 1, arch.embed_dim, arch.depth, arch.mlp_ratio)


def mae_forward_flops(arch: Arch, mask_ratio: float, decode: bool = True) -> float:
    """Masked encoder (+ decoder) forward on one view: patch embedding of every patch, blocks
    on the CLS + kept tokens, then decoder_embed, decoder blocks on all tokens, decoder_pred."""
    patches = (arch.img_size // arch.patch_size) ** 2
    kept = num_kept(patches, mask_ratio) + 1
    flops = 2 * patches * 3 * arch.patch_size ** 2 * arch.embed_dim
    flops += transformer_flops(kept, arch.embed_dim, arch.depth, arch.mlp_ratio)
    if decode:
        d = arch.decoder_embed_dim
        flops += 2 * kept * arch.embed_dim * d
        flops += transformer_flops(patches + 1, d, arch.decoder_depth, arch.mlp_ratio)
        flops += 2 * (patches + 1) * d * 3 * arch.patch_size ** 2
    return flops


@dataclass
class StepFlops:
    trained_forward: float   # student parts, per sample
    frozen_forward: float    # teacher towers, per sample

    @property
    def per_sample(self) -> float:
        return 3 * self.trained_forward + self.frozen_forward


def uniemox_step_flops(arch: Arch, mask_ratio: float, proj_dim: int, two_views: bool = True,
                       decode: bool = True, teacher_forward: float = 0.0) -> StepFlops:
    """Scene view (masked, decoded), person view (masked, encoded), CLS projections; the
    fusion's few C x C products are counted as one Linear. ``teacher_forward``: per-sample
    FLOPs of the frozen towers (see ``clip_forward_flops``)."""
    trained = mae_forward_flops(arch, mask_ratio, decode)
    if two_views:
        trained += mae_forward_flops(arch, mask_ratio, decode=False) + 2 * proj_dim * proj_dim
    trained += (2 if two_views else 1) * 2 * arch.embed_dim * proj_dim
    return StepFlops(trained, teacher_forward)


def clip_forward_flops(vision_width: int, vision_layers: int, patch_size: int, image_size: int,
                       text_width: int, text_layers: int, context_length: int = 77,
                       embed_dim: int = 512, mlp_ratio: float = 4.0) -> float:
    """One image + one caption through a CLIP model's two towers (projections included)."""
    patches = (image_size // patch_size) ** 2
    vision = 2 * patches * 3 * patch_size ** 2 * vision_width
    vision += transformer_flops(patches + 1, vision_width, vision_layers, mlp_ratio)
    text = transformer_flops(context_length, text_width, text_layers, mlp_ratio)
    return vision + text + 2 * (vision_width + text_width) * embed_dim


def clip_forward_flops_of(model_name: str) -> float:
    """``clip_forward_flops`` from an open_clip model config (0 where the towers are not plain
    ViT/transformer configs, e.g. timm or HF towers: the teacher is then left out of MFU)."""
    import open_clip

    cfg = open_clip.get_model_config(model_name) or {}
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if "timm_model_name" in vision or "hf_model_name" in text or "width" not in vision:
        return 0.0
    return clip_forward_flops(vision["width"], vision["layers"], vision["patch_size"], vision["image_size"],
                              text.get("width", 512), text.get("layers", 12), text.get("context_length", 77),
                              cfg.get("embed_dim", 512), vision.get("mlp_ratio", 4.0))


def pretrainer_step_flops(pretrainer, arch: Arch, teacher_model: str) -> StepFlops:
    """``uniemox_step_flops`` of a built ``UniEmoXPretrainer``: its mask ratio, projection width,
    views and losses decide what is counted; the teacher's towers (open_clip config
    ``teacher_model``) only when a distillation loss is on."""
    teacher = clip_forward_flops_of(teacher_model) if pretrainer.uses_distillation else 0.0
    return uniemox_step_flops(arch, pretrainer.mask_ratio, pretrainer.proj_dim,
                              two_views=pretrainer.uses_person_view,
                              decode="reconstruction" in pretrainer.components, teacher_forward=teacher)
