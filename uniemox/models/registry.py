"""Named model sizes (docs/method.md#model-sizes) and the constructors that build them.

One name serves the pretrainer (encoder + MAE decoder + fusion) and the encoder alone
(fine-tuning): ``create_pretrainer("uniemox_vit_base_patch16")``, ``create_encoder(...)``.
"""
from dataclasses import MISSING, asdict, dataclass
from typing import Dict, List

from uniemox.config.core import bounded, from_dict
from uniemox.errors import UserError


@dataclass(frozen=True)
class Arch:
    """Every field typed and ranged as a config field is (`get_arch` checks ``model.arch``
    overrides against it, and that the sizes fit together); the upper bounds keep a typo from
    building a model no machine can hold."""
    embed_dim: int = bounded(MISSING, lo=1, hi=16384)
    depth: int = bounded(MISSING, lo=1, hi=256)
    num_heads: int = bounded(MISSING, lo=1, hi=1024)
    patch_size: int = bounded(16, lo=1, hi=1024)
    img_size: int = bounded(224, lo=1, hi=8192)
    mlp_ratio: float = bounded(4.0, lo=0.0, hi=64.0, lo_open=True)
    decoder_embed_dim: int = bounded(512, lo=1, hi=16384)
    decoder_depth: int = bounded(8, lo=1, hi=256)
    decoder_num_heads: int = bounded(16, lo=1, hi=1024)

    def encoder_kwargs(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("decoder_")}

    def decoder_kwargs(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k.startswith("decoder_")}


_REGISTRY: Dict[str, Arch] = {}


def register_model(name: str, arch: Arch) -> Arch:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = arch
    return arch


def list_models() -> List[str]:
    return sorted(_REGISTRY)


def get_arch(name: str, **overrides) -> Arch:
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    arch = _REGISTRY[name]
    unknown = set(overrides) - set(asdict(arch))
    if unknown:
        raise UserError(f"unknown architecture override(s) {sorted(unknown)} for {name}; "
                        f"valid: {sorted(asdict(arch))}")
    arch = from_dict(Arch, {**asdict(arch), **overrides}, prefix="model.arch.")  # types and ranges
    problems = [f"img_size {arch.img_size} is not a multiple of patch_size {arch.patch_size}"
                if arch.img_size % arch.patch_size else None]
    for width, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
        w, h = getattr(arch, width), getattr(arch, heads)
        problems.append(f"{width} {w} is not a multiple of {heads} {h}" if w % h else None)
        # 2-D sin-cos position embeddings: a quarter of the width per axis and function
        problems.append(f"{width} {w} is not a multiple of 4 (2-D sin-cos position embeddings)" if w % 4 else None)
    problems = [p for p in problems if p]
    if problems:
        raise UserError(f"model.arch of {name}: {'; '.join(problems)}")
    return arch


# The paper's sizes; the MAE decoder is 512 wide, 8 blocks, 16 heads. The small sizes, for
# tests and CPU runs, get a lighter decoder (its width need not match the teacher: a separate
# projection then maps the CLS token to the teacher's width).
_SMALL_DECODER = dict(decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8)
register_model("uniemox_vit_tiny_patch16", Arch(192, 12, 3, **_SMALL_DECODER))
register_model("uniemox_vit_small_patch16", Arch(384, 12, 6, **_SMALL_DECODER))
register_model("uniemox_vit_base_patch16", Arch(768, 12, 12))
register_model("uniemox_vit_large_patch16", Arch(1024, 24, 16))
register_model("uniemox_vit_huge_patch14", Arch(1280, 32, 16, patch_size=14))


def create_encoder(name: str = "uniemox_vit_base_patch16", *, num_classes: int = 0,
                   global_pool: str = "avg", drop_path_rate: float = 0.0,
                   attn_backend: str = "auto", dynamic_img_size: bool = False, **arch_overrides):
    """The encoder alone (fine-tuning, probing, export): timm's ``VisionTransformer`` with this
    project's attention and position table (``vit.py``). ``dynamic_img_size``: any image size at
    run time (the sin-cos table generated for each grid)."""
    from .vit import VisionTransformer

    arch = get_arch(name, **arch_overrides)
    return VisionTransformer(**arch.encoder_kwargs(), num_classes=num_classes, global_pool=global_pool,
                             drop_path_rate=drop_path_rate, attn_backend=attn_backend,
                             dynamic_img_size=dynamic_img_size)
