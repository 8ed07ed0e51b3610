"""Fusion of the scene token alpha and the person token beta into gamma (docs/method.md#fusion).

Every variant maps (alpha [B, C], beta [B, C]) -> gamma [B, C] and is built by name with
`build_fusion(name, dim, heads)`. The `none` variant returns alpha unchanged (the
"without fusion" ablation); its `uses_beta` is False so a caller may skip the person view.

The release's parameter names for these modules, and loading/exporting its weights, are in
fusion_release.py.

Initialisation: every nn.Linear here is Xavier-uniform with zero bias and every LayerNorm
is (1, 0): exactly what MAE's `initialize_weights` (`model.apply(_init_weights)`) would set,
so re-initialising the whole pretrainer that way changes nothing in distribution. The
bilinear variant keeps its factors as plain Parameters, which MAE's init does not touch.
"""
import math
from typing import Dict, List, Tuple, Type

import torch
import torch.nn.functional as F
from torch import nn

from uniemox.errors import UserError

# nn.LayerNorm's default, as the release's fusion modules use it: the same weights give the same
# token only with the same eps (the ViT keeps MAE's 1e-6, models/vit.py).
LN_EPS = 1e-5
EPS_BIAS_INIT = 1e-5


def _xavier_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _eps_bias(dim: int) -> nn.Parameter:
    return nn.Parameter(torch.full((1, dim), EPS_BIAS_INIT))


class Fusion(nn.Module):
    """Base class: `options` names the build_fusion arguments a variant takes besides dim."""

    options: Tuple[str, ...] = ()
    uses_beta: bool = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)}" for k in ("dim",) + self.options)


class NoFusion(Fusion):
    """gamma = alpha (ablation: scene token alone, beta ignored). No parameters."""

    uses_beta = False

    def forward(self, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return alpha


class EasyFusion(Fusion):
    """gamma = ELU(W(LN(a) + LN(b))), one LayerNorm shared by both inputs (release default).

    W: Linear(C, C), Xavier-uniform weight, zero bias.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.proj = _xavier_linear(dim, dim)

    def forward(self, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return F.elu(self.proj(self.norm(alpha) + self.norm(beta)))


class WeightedSumFusion(Fusion):
    """gamma = LN(sum_h (w_a[h] * a + w_b[h] * b)) + eps_bias.

    w_a, w_b: learned (H, 1, C), randn init; eps_bias: learned (1, C), init 1e-5.
    The sum over heads equals (sum_h w_a[h]) * a + (sum_h w_b[h]) * b, which is how it is
    computed: the heads are over-parameterised (as in the release), not more expressive.
    """

    options = ("heads",)

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__(dim)
        self.heads = heads
        self.weight_a = nn.Parameter(torch.randn(heads, 1, dim))
        self.weight_b = nn.Parameter(torch.randn(heads, 1, dim))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.eps_bias = _eps_bias(dim)

    def forward(self, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        mixed = self.weight_a.sum(0) * alpha + self.weight_b.sum(0) * beta
        return self.norm(mixed) + self.eps_bias


class DualAttentionFusion(Fusion):
    """gamma = swish(sum_h (softmax(W_a^h a) * a + softmax(W_b^h b) * b)) + eps_bias.

    W_a^h, W_b^h: Linear(C, 1) per head (stored as one Linear(C, H) per input). As in the
    release, each softmax runs over a size-1 axis, so it is identically 1 and the variant
    reduces to gamma = swish(H * (a + b)) + eps_bias; the scores' gradient is exactly zero,
    so W_a, W_b never learn. Kept for parity with the release under this name; the
    scores stay in the graph so that data-parallel wrappers see every parameter used.
    """

    options = ("heads",)

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__(dim)
        self.heads = heads
        self.score_a = _xavier_linear(dim, heads)
        self.score_b = _xavier_linear(dim, heads)
        self.eps_bias = _eps_bias(dim)

    def forward(self, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        # [B, H, 1]: softmax over the last, size-1 axis (the release's behaviour).
        attn_a = self.score_a(alpha).unsqueeze(-1).softmax(dim=-1)
        attn_b = self.score_b(beta).unsqueeze(-1).softmax(dim=-1)
        mixed = (attn_a * alpha.unsqueeze(1) + attn_b * beta.unsqueeze(1)).sum(1)
        return F.silu(mixed) + self.eps_bias


class MlpGluFusion(Fusion):
    """Per head h: x_h = softmax_C(W_a^h a) * a + softmax_C(W_b^h b) * b, W: Linear(C, C);
    m = Linear(C, C)(ReLU(Linear(C*H, C)(concat_h x_h)));
    gamma = ReLU(m * sigmoid(G m)) + eps_bias, G: Linear(C, C).
    """

    options = ("heads",)

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__(dim)
        self.heads = heads
        self.proj_a = _xavier_linear(dim, heads * dim)  # the H W_a^h side by side
        self.proj_b = _xavier_linear(dim, heads * dim)
        self.mlp = nn.Sequential(_xavier_linear(heads * dim, dim), nn.ReLU(),
                                 _xavier_linear(dim, dim))
        self.gate = _xavier_linear(dim, dim)
        self.eps_bias = _eps_bias(dim)

    def _attend(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        weights = proj(x).unflatten(-1, (self.heads, self.dim)).softmax(dim=-1)
        return weights * x.unsqueeze(1)  # [B, H, C]

    def forward(self, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        heads = self._attend(self.proj_a, alpha) + self._attend(self.proj_b, beta)
        m = self.mlp(heads.flatten(1))
        return F.relu(m * torch.sigmoid(self.gate(m))) + self.eps_bias


class BilinearFusion(Fusion):
    """gamma = LN_out(â + b̂ + U^T((P â) * (Q b̂))), â = LN(a), b̂ = LN(b) (one shared LN).

    This project's own design (the release names `bilinear` but never shipped it): a
    residual low-rank bilinear pooling. P, Q, U: (r, C), rank r. P and Q start N(0, 1/C)
    so that P â has unit-scale entries; U starts at zero, so at initialisation
    gamma = LN_out(LN(a) + LN(b)), the `easy`-like sum, and the bilinear term grows from
    there (P and Q get gradient once U has moved off zero, as with LoRA's zero factor).
    """

    options = ("rank",)

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__(dim)
        self.rank = rank
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.proj_a = nn.Parameter(torch.randn(rank, dim) / math.sqrt(dim))
        self.proj_b = nn.Parameter(torch.randn(rank, dim) / math.sqrt(dim))
        self.out = nn.Parameter(torch.zeros(rank, dim))
        self.out_norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        a, b = self.norm(alpha), self.norm(beta)
        pooled = F.linear(a, self.proj_a) * F.linear(b, self.proj_b)  # [B, r]
        return self.out_norm(a + b + pooled @ self.out)


FUSIONS: Dict[str, Type[Fusion]] = {
    "easy": EasyFusion,
    "weighted_sum": WeightedSumFusion,
    "dual_attention": DualAttentionFusion,
    "mlp_glu": MlpGluFusion,
    "bilinear": BilinearFusion,
    "none": NoFusion,
}


def list_fusions() -> List[str]:
    return list(FUSIONS)


def build_fusion(name: str, dim: int = 512, heads: int = 3, *, rank: int = 64) -> Fusion:
    """The fusion `name` for width `dim`; `heads` is used by weighted_sum, dual_attention and
    mlp_glu, `rank` by bilinear, each ignored by the others."""
    if name not in FUSIONS:
        raise UserError(f"unknown fusion {name!r}; valid names: {', '.join(FUSIONS)}")
    for arg, value in (("dim", dim), ("heads", heads), ("rank", rank)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"fusion {arg} must be a positive integer, got {value!r}")
    cls = FUSIONS[name]
    given = {"heads": heads, "rank": rank}
    return cls(dim, **{k: given[k] for k in cls.options})
