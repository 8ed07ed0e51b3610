import pytest
import torch
import torch.nn.functional as F

from uniemox.errors import UserError
from uniemox.losses import (distillation_losses, parse_components, reconstruction_loss,
                            reconstruction_loss_from_images)


def _recon_by_loops(pred, target, mask, norm_pix):
    total, count = 0.0, 0.0
    for n in range(pred.shape[0]):
        for l in range(pred.shape[1]):
            if mask[n, l] == 0:
                continue
            t = target[n, l]
            if norm_pix:
                t = (t - t.mean()) / torch.sqrt(t.var(unbiased=True) + 1e-6)
            total = total + ((pred[n, l] - t) ** 2).sum() / t.numel()
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [False, True])
def test_reconstruction_loss_and_gradient(norm_pix):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 5, 12, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 5, 12, generator=g, dtype=torch.float64)
    mask = (torch.rand(3, 5, generator=g) > 0.4).double()
    mask[0, 0] = 1
    ours = reconstruction_loss(pred, target, mask, norm_pix)
    (grad,) = torch.autograd.grad(ours, pred)
    ref = _recon_by_loops(pred, target, mask, norm_pix)
    (ref_grad,) = torch.autograd.grad(ref, pred)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert torch.all(grad[mask == 0] == 0)  # visible patches carry no loss


def test_reconstruction_from_images_equals_patch_form():
    g = torch.Generator().manual_seed(1)
    imgs = torch.randn(2, 3, 32, 32, generator=g)
    pred = torch.randn(2, 4, 16 * 16 * 3, generator=g)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1]])
    # patchify by hand: row-major patches, pixels row-major, channel last
    target = torch.stack([torch.stack([imgs[n, :, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16].permute(1, 2, 0).reshape(-1)
                                       for r in range(2) for c in range(2)]) for n in range(2)])
    for norm_pix in (False, True):
        torch.testing.assert_close(reconstruction_loss_from_images(imgs, pred, mask, 16, norm_pix, impl="torch"),
                                   _recon_by_loops(pred, target, mask, norm_pix).float())


def _distill_by_hand(student, image, text, logit_scale=100.0):
    sim = 1 - F.cosine_similarity(student, image, dim=-1).mean()
    s_n, i_n, t_n = (F.normalize(x, dim=-1) for x in (student, image, text))
    a = logit_scale * s_n @ t_n.T
    c = logit_scale * i_n @ t_n.T
    con = 1 - torch.stack([F.cosine_similarity(a[i], c[i], dim=0) for i in range(a.shape[0])]).mean()
    return sim, con


@pytest.mark.parametrize("rows_text", [4, 9])  # 9: global-batch variant, more text rows than images
def test_distillation_losses_and_student_gradient(rows_text):
    g = torch.Generator().manual_seed(2)
    student = (3 * torch.randn(4, 16, generator=g, dtype=torch.float64)).requires_grad_()
    image = 5 * torch.randn(4, 16, generator=g, dtype=torch.float64)
    text = 0.1 * torch.randn(rows_text, 16, generator=g, dtype=torch.float64)
    sim, con = distillation_losses(student, image, text, impl="torch")
    ref_sim, ref_con = _distill_by_hand(student, image, text)
    torch.testing.assert_close(sim.double(), ref_sim, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(con.double(), ref_con, rtol=1e-6, atol=1e-6)
    for ours, ref in ((sim, ref_sim), (con, ref_con)):
        (g1,) = torch.autograd.grad(ours, student, retain_graph=True)
        (g2,) = torch.autograd.grad(ref, student, retain_graph=True)
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)


def test_distillation_is_zero_when_student_equals_teacher():
    x = torch.randn(5, 8)
    sim, con = distillation_losses(2 * x, x, torch.randn(5, 8), impl="torch")
    assert sim.abs() < 1e-6 and con.abs() < 1e-6


def test_distillation_accepts_unnormalised_inputs():
    x, y, t = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    a = distillation_losses(x, y, t, impl="torch")
    b = distillation_losses(7 * x, 0.2 * y, 3 * t, impl="torch")
    torch.testing.assert_close(torch.stack(a), torch.stack(b))


def test_components():
    assert parse_components("all") == {"contrastive", "similarity", "reconstruction"}
    assert parse_components("l3,L2") == {"reconstruction", "similarity"}
    with pytest.raises(UserError, match="unknown loss component"):
        parse_components("reconstruction,perceptual")
    with pytest.raises(UserError):
        parse_components([])
