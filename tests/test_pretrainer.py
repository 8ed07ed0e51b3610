"""The whole UniEmoX step: two views through one encoder, fusion, a real (tiny, random)
open_clip teacher, all three losses."""
import pytest
import torch

from uniemox.data import build_prompt
from uniemox.errors import UserError
from uniemox.models import create_pretrainer
from uniemox.exports.teacher import load_teacher

ARCH = dict(img_size=32, depth=2, decoder_depth=1)


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("uniemox-clip-tiny", pretrained="none")


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    scene = torch.randn(n, 3, 32, 32, generator=g)
    person = torch.randn(n, 3, 32, 32, generator=g)
    texts = [build_prompt(e, {"scene": "beach"}) for e in ("awe", "fear", "awe", "sadness")[:n]]
    return scene, person, texts


def _pretrainer(teacher, **kw):
    torch.manual_seed(0)
    m = create_pretrainer("uniemox_vit_tiny_patch16", **ARCH, proj_dim=teacher.embed_dim, **kw)
    m.attach_teacher(teacher)
    return m


@pytest.mark.parametrize("fusion", ["easy", "weighted_sum", "dual_attention", "mlp_glu", "bilinear"])
def test_step_losses_finite_and_gradients_reach_the_student_only(teacher, fusion):
    m = _pretrainer(teacher, fusion=fusion)
    out = m(*_batch())
    assert {"loss", "reconstruction", "similarity", "contrastive"} <= set(out)
    for key in ("loss", "reconstruction", "similarity", "contrastive"):
        assert torch.isfinite(out[key]), key
    torch.testing.assert_close(out["loss"], out["reconstruction"] + out["similarity"] + out["contrastive"])
    out["loss"].backward()
    grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
    for prefix in ("model.blocks.0.attn.qkv.weight", "model.patch_embed.proj.weight",
                   "model.decoder_blocks.0.mlp.fc1.weight", "model.decoder_pred.weight", "distill_proj.weight"):
        assert grads[prefix] is not None and grads[prefix].abs().sum() > 0, prefix
    fusion_grads = [g for n, g in grads.items() if n.startswith("fusion.") and g is not None]
    assert fusion_grads and any(g.abs().sum() > 0 for g in fusion_grads)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not any(n.startswith(("_teacher", "teacher")) for n in m.state_dict())


def test_step_in_bf16_autocast(teacher):
    m = _pretrainer(teacher)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(*_batch())
    assert all(torch.isfinite(out[k]) for k in ("loss", "reconstruction", "similarity", "contrastive"))
    assert out["loss"].dtype == torch.float32
    out["loss"].backward()
    assert m.model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_text_as_prompts_tokens_or_embeddings_agree(teacher):
    m = _pretrainer(teacher).eval()
    scene, person, texts = _batch()
    noise = torch.rand(4, 4), torch.rand(4, 4)
    a = m(scene, person, texts, *noise)
    tokens = teacher.tokenizer(texts) if hasattr(teacher, "tokenizer") else None
    b = m(scene, person, teacher.encode_text(texts), *noise)
    for key in ("reconstruction", "similarity", "contrastive"):
        torch.testing.assert_close(a[key], b[key])
    if tokens is not None:
        c = m(scene, person, tokens, *noise)
        torch.testing.assert_close(a["contrastive"], c["contrastive"])


def test_precomputed_teacher_targets_give_the_same_step(teacher):
    """The trainer calls the teacher first (distillation_targets) and the student with them: the
    same losses and gradients, bit for bit, as the one-call step; without distillation, None."""
    scene, person, texts = _batch()
    noise = torch.rand(4, 4), torch.rand(4, 4)
    results = []
    for precomputed in (False, True):
        m = _pretrainer(teacher)
        if precomputed:
            out = m(scene, person, None, *noise, targets=m.distillation_targets(scene, texts))
        else:
            out = m(scene, person, texts, *noise)
        out["loss"].backward()
        results.append((out["loss"].detach(), m.model.blocks[0].attn.qkv.weight.grad.clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert _pretrainer(teacher, losses="reconstruction").distillation_targets(scene, texts) is None
    with pytest.raises(ValueError, match="prompts"):
        _pretrainer(teacher).distillation_targets(scene, None)


@pytest.mark.parametrize("losses,expected", [
    ("reconstruction", {"reconstruction"}),
    ("similarity", {"similarity"}),
    ("contrastive,similarity", {"contrastive", "similarity"}),
])
def test_component_selection(teacher, losses, expected):
    m = _pretrainer(teacher, losses=losses)
    out = m(*_batch())
    assert set(out) & {"reconstruction", "similarity", "contrastive"} == expected
    torch.testing.assert_close(out["loss"], sum(out[k] for k in expected))
    out["loss"].backward()
    decoder_grad = m.model.decoder_pred.weight.grad
    assert (decoder_grad is not None) == ("reconstruction" in expected)


def test_without_fusion_the_person_view_is_not_needed(teacher):
    m = _pretrainer(teacher, fusion="none")
    scene, _, texts = _batch()
    out = m(scene, None, texts)
    assert torch.isfinite(out["loss"])


def test_teacher_width_must_match(teacher):
    m = create_pretrainer("uniemox_vit_tiny_patch16", **ARCH, proj_dim=512)
    with pytest.raises(UserError, match="proj_dim=64"):
        m.attach_teacher(teacher)


def test_one_encoder_pass_for_both_views_gives_the_two_pass_step():
    """joint_views (the default): scene and person through the encoder as one batch of 2B; the
    encoder is per sample, so losses and gradients are those of the release's two passes."""
    from uniemox.exports.teacher import load_teacher
    torch.manual_seed(0)
    teacher = load_teacher("uniemox-clip-tiny-64", pretrained="none")
    model = create_pretrainer("uniemox_vit_tiny_patch16", proj_dim=teacher.embed_dim, img_size=64, depth=2,
                              decoder_depth=1, fusion="mlp_glu")
    model.attach_teacher(teacher)
    views, noise = torch.randn(2, 4, 3, 64, 64), torch.rand(2, 4, 16)
    texts = [f"The overall emotion conveyed is {e}." for e in ("awe", "fear", "anger", "awe")]
    results = []
    for joint in (True, False):
        model.joint_views = joint
        model.zero_grad()
        out = model(views[0], views[1], texts, noise[0], noise[1])
        out["loss"].backward()
        results.append(({k: out[k].detach() for k in ("loss", "reconstruction", "similarity", "contrastive")},
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = results
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    assert ga.keys() == gb.keys() and any(k.startswith("fusion.") for k in ga)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("drop_path", [0.0, 0.3])
def test_activation_checkpointing_gives_the_same_losses_and_gradients(drop_path):
    """model.grad_checkpointing: encoder and decoder blocks recomputed in the backward; with the
    random draws of drop-path replayed, nothing changes but memory and time."""
    from timm.layers import DropPath

    from uniemox.exports.teacher import load_teacher
    teacher = load_teacher("uniemox-clip-tiny-64", pretrained="none")
    views, noise = torch.randn(2, 4, 3, 64, 64), torch.rand(2, 4, 16)
    texts = ["The overall emotion conveyed is awe."] * 4
    results, saved = [], []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = create_pretrainer("uniemox_vit_tiny_patch16", proj_dim=teacher.embed_dim, img_size=64, depth=2,
                                  decoder_depth=2)
        for block in model.model.blocks:  # drop-path draws from the global RNG in the forward
            block.drop_path1, block.drop_path2 = DropPath(drop_path), DropPath(drop_path)
        model.attach_teacher(teacher)
        model.model.set_grad_checkpointing(recompute)
        torch.manual_seed(1)
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.nbytes) or t, lambda t: t):
            out = model(views[0], views[1], texts, noise[0], noise[1])
        saved.append(sum(kept))
        out["loss"].backward()
        results.append((out["loss"].detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    assert saved[1] < 0.6 * saved[0], saved  # the blocks kept only their inputs for the backward
    (la, ga), (lb, gb) = results
    torch.testing.assert_close(la, lb, rtol=0, atol=0)
    assert ga.keys() == gb.keys() and any(k.startswith("model.decoder_blocks.") for k in ga)
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-6, atol=1e-7, msg=k)
