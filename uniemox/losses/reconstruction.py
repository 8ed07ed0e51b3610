"""L3: MAE pixel reconstruction on the masked patches of the scene view (docs/method.md#losses).

The release sliced the decoder output with x[:, :1, :] (the CLS output) instead of
x[:, 1:, :]; here the prediction is always the patch outputs, [N, L, p*p*3].
"""
import torch

from uniemox.kernels import masked_patch_mse, masked_reconstruction_loss


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                        norm_pix: bool = False) -> torch.Tensor:
    """pred/target [N, L, p*p*3], mask [N, L] with 1 = removed: per-patch pixel MSE
    (optionally against the per-patch normalised target), sum(loss * mask) / sum(mask)."""
    return masked_patch_mse(pred, target, mask, norm_pix)


def reconstruction_loss_from_images(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                                    patch_size: int, norm_pix: bool = False,
                                    impl: str = "auto") -> torch.Tensor:
    """The same loss reading the image tensor [N, 3, H, W] directly; ``impl`` picks the fused
    Triton kernel (no materialised target) or the PyTorch reference."""
    return masked_reconstruction_loss(imgs, pred, mask, patch_size, norm_pix, impl=impl)
