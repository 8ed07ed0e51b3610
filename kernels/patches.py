"""MAE's patch layout: [N, 3, H, W] <-> [N, L, p*p*3], pixels of a patch row-major, channel last."""
import torch


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    n, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not a multiple of patch size {p}")
    gh, gw = h // p, w // p
    x = imgs.reshape(n, c, gh, p, gw, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, gh * gw, p * p * c)


def unpatchify(x: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    n, length, _ = x.shape
    p = patch_size
    g = int(round(length ** 0.5))
    if g * g != length:
        raise ValueError(f"{length} patches do not form a square grid")
    x = x.reshape(n, g, g, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, g * p, g * p)
