"""The frozen CLIP teacher: weights sources, frozen inference, autograd-safe outputs, text cache.

Real open_clip models with random weights: the project's tiny config for most tests,
ViT-B-16 for its width and for a wrong-architecture load.
"""
import logging
import os
import pickle
import zipfile

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import build_model_from_openai_state_dict
from safetensors.torch import save_file

from uniemox.errors import UserError
from uniemox.exports.teacher import load_teacher, read_torchscript_weights
from uniemox.models.teacher import IMAGENET_MEAN, IMAGENET_STD, CLIPTeacher

TINY = "uniemox-clip-tiny"


def _tiny(**kw) -> CLIPTeacher:
    kw.setdefault("pretrained", "none")
    return load_teacher(TINY, **kw)


@pytest.fixture(scope="module")
def tiny() -> CLIPTeacher:
    torch.manual_seed(0)
    return _tiny()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 224, 224, generator=g)


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("w") / "tiny_openclip.pt"
    torch.save(tiny.clip.state_dict(), path)
    return str(path)


def _same_weights(src: CLIPTeacher, **kw) -> CLIPTeacher:
    t = _tiny(**kw)
    t.clip.load_state_dict(src.clip.state_dict())
    return t


# ---- the model and its size -------------------------------------------------------------
def test_tiny_config_is_registered_and_small():
    assert TINY in open_clip.list_models()
    model = open_clip.create_model(TINY)
    mbytes = sum(p.numel() for p in model.parameters()) * 2 / 2**20  # as fp16/bf16 weights
    assert mbytes < 10, mbytes


def test_vit_b16_random_teacher_width_and_encode():
    t = load_teacher("ViT-B-16", pretrained="none")
    assert t.embed_dim == 512
    img = t.encode_image(torch.randn(1, 3, 224, 224))
    txt = t.encode_text(["The overall emotion conveyed is awe."])
    assert img.shape == (1, 512) and txt.shape == (1, 512)
    assert img.dtype == txt.dtype == torch.float32
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()


# ---- frozen, and its outputs usable by the student's autograd ----------------------------
def test_frozen_backward_reaches_student_not_teacher(tiny, images):
    assert not any(p.requires_grad for p in tiny.parameters())
    tiny.train()
    assert not any(m.training for m in tiny.modules())
    omega, lam = tiny(images, ["a", "b", "c"])
    student = torch.nn.Linear(3 * 224 * 224, tiny.embed_dim)
    g = student(images.flatten(1))
    sim = 1 - F.cosine_similarity(g, omega).mean()
    a = F.normalize(g, dim=-1) @ F.normalize(lam, dim=-1).T
    c = F.normalize(omega, dim=-1) @ F.normalize(lam, dim=-1).T
    (sim + 1 - F.cosine_similarity(a, c).mean()).backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.parameters())


def test_outputs_are_not_inference_tensors(tiny, images):
    omega, lam = tiny(images, ["x"] * 3)
    assert not omega.is_inference() and not lam.is_inference()
    w = torch.ones(tiny.embed_dim, requires_grad=True)
    (w * omega).sum().backward()  # mul saves omega for w's gradient
    assert torch.equal(w.grad, omega.sum(0))
    # the failure this guards against: a raw inference tensor cannot be saved for backward
    with torch.inference_mode():
        raw = tiny.clip.encode_image(images)
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        (w * raw).sum().backward()


def test_autocast_of_caller_does_not_change_fp32_teacher(tiny, images):
    with torch.no_grad():
        ref = tiny.clip.encode_image(images)  # the plain fp32 open_clip model
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = tiny.encode_image(images)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


def test_bf16_precision_and_dtype_follows_precision(tiny, images):
    t = _same_weights(tiny, precision="bf16")
    assert t.dtype == torch.bfloat16
    out = t.encode_image(images)
    assert out.dtype == torch.float32
    assert F.cosine_similarity(out, tiny.encode_image(images)).min() > 0.99
    f = _same_weights(tiny, precision="fp32")
    f.half()  # .to(dtype)/.half() cannot override `precision`
    assert f.dtype == torch.float32 and f.to("cpu") is f
    assert list(f.state_dict()) == ["clip." + k for k in tiny.clip.state_dict()]


# ---- image input: normalisation option and resizing ---------------------------------------
def test_input_norm_clip_equals_manual_renormalisation(tiny, images):
    clip_norm = _same_weights(tiny, input_norm="clip")
    mean_in, std_in = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    mean_c = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std_c = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    manual = ((images * std_in + mean_in) - mean_c) / std_c
    got = clip_norm.encode_image(images)
    torch.testing.assert_close(got, tiny.encode_image(manual), rtol=1e-4, atol=1e-5)
    assert (got - tiny.encode_image(images)).abs().max() > 1e-3


@pytest.mark.parametrize("side", [112, 320])
def test_resize_to_model_size_bicubic(tiny, side):
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(side))
    manual = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False, antialias=side > 224)
    torch.testing.assert_close(tiny.encode_image(x), tiny.encode_image(manual), rtol=1e-4, atol=1e-5)


# ---- text: tokens, cache ------------------------------------------------------------------
def test_text_cache_hits_misses_and_identical_embeddings(tiny):
    t = _same_weights(tiny)
    prompts = ["The overall emotion conveyed is awe.", "The overall emotion conveyed is fear.",
               "The overall emotion conveyed is awe.", "The scene type of this photo is beach.",
               "The overall emotion conveyed is awe."]
    first = t.encode_text(prompts)
    assert t.cache_info()[:3] == (2, 3, 3)  # 3 distinct prompts went through the tower once
    second = t.encode_text(prompts)
    assert t.cache_info()[:3] == (7, 3, 3)
    assert torch.equal(first, second)
    assert torch.equal(first[0], first[2]) and not torch.equal(first[0], first[1])
    uncached = _same_weights(tiny, text_cache_size=0)
    fresh = uncached.encode_text(prompts)
    torch.testing.assert_close(first, fresh, rtol=1e-5, atol=1e-6)
    assert uncached.cache_info()[:3] == (0, 0, 0)
    tokens = t.tokenizer(prompts)
    assert tokens.shape == (5, 77)
    torch.testing.assert_close(t.encode_text(tokens), fresh, rtol=1e-5, atol=1e-6)
    assert t.cache_info()[:2] == (7, 3)  # token input bypasses the cache


def test_text_cache_is_lru_and_cleared_on_move(tiny):
    t = _same_weights(tiny, text_cache_size=2)
    t.encode_text(["a", "b"])
    t.encode_text(["a"])  # hit: a becomes the most recent
    t.encode_text(["c"])  # evicts b, the least recent
    t.encode_text(["a"])  # hit
    t.encode_text(["b"])  # miss
    assert t.cache_info() == (2, 4, 2, 2)
    t.to("cpu")
    assert t.cache_info().size == 0


def test_bad_text_input(tiny):
    with pytest.raises(TypeError):
        tiny.encode_text("a single string")
    with pytest.raises(ValueError):
        tiny.encode_text(torch.zeros(2, 77))
    assert tiny.encode_text([]).shape == (0, tiny.embed_dim)


# ---- weights files ----------------------------------------------------------------------
def test_openclip_weights_round_trip(tiny, tiny_file, images, tmp_path):
    loaded = load_teacher(TINY, weights=tiny_file)
    assert torch.equal(loaded.encode_image(images), tiny.encode_image(images))
    assert torch.equal(loaded.encode_text(["hello"]), tiny.encode_text(["hello"]))
    st = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.clip.state_dict().items()}, str(st))
    wrapped = tmp_path / "ckpt.pt"  # open_clip training checkpoint, DDP prefix
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in tiny.clip.state_dict().items()}},
               wrapped)
    own = tmp_path / "teacher.pt"  # CLIPTeacher.state_dict() itself
    torch.save(tiny.state_dict(), own)
    for path in (st, wrapped, own):
        assert torch.equal(load_teacher(TINY, weights=path).encode_image(images), tiny.encode_image(images))


def _openai_like_model(seed: int = 3):
    """A model like OpenAI's release: QuickGELU, linear and conv weights in fp16."""
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY, force_quick_gelu=True)
    open_clip.convert_weights_to_fp16(model)
    return model


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*deprecated:FutureWarning")
def test_openai_torchscript_release_format(images, tmp_path):
    model = _openai_like_model()
    sd = model.state_dict()
    for key in ("visual.conv1.weight", "visual.transformer.resblocks.0.attn.in_proj_weight",
                "transformer.resblocks.1.mlp.c_fc.weight", "token_embedding.weight", "positional_embedding",
                "ln_final.weight", "text_projection", "logit_scale", "visual.proj"):
        assert key in sd
    path = tmp_path / "ViT-tiny.pt"  # OpenAI ships TorchScript archives
    tokens = torch.zeros(1, 77, dtype=torch.long)
    torch.jit.save(torch.jit.trace_module(model, {"encode_text": (tokens,)}), str(path))
    # the archive is read without TorchScript, yet gives exactly what torch.jit.load would
    (ours, quick_gelu), theirs = read_torchscript_weights(path), torch.jit.load(str(path)).state_dict()
    assert quick_gelu
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in ours)
    assert ours["visual.conv1.weight"].dtype == torch.float16
    teacher = load_teacher(TINY, weights=path)
    assert "QuickGELU" in teacher.source
    # independent reference: open_clip's own builder infers the architecture from the state dict
    ref = build_model_from_openai_state_dict(dict(sd)).float().eval()
    with torch.no_grad():
        torch.testing.assert_close(teacher.encode_image(images), ref.encode_image(images), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(teacher.encode_text(["a cat"]), ref.encode_text(teacher.tokenizer(["a cat"])),
                                   rtol=1e-4, atol=1e-5)
    # GELU instead of QuickGELU would be a different function: the auto-detection matters
    plain = tmp_path / "plain.pt"
    torch.save(sd, plain)
    gelu = load_teacher(TINY, weights=plain)
    assert (gelu.encode_image(images) - teacher.encode_image(images)).abs().max() > 1e-4
    # OpenAI's meta entries in a plain state dict also mark the format
    meta = tmp_path / "meta.pt"
    torch.save({**sd, "input_resolution": torch.tensor(224), "context_length": torch.tensor(77),
                "vocab_size": torch.tensor(49408)}, meta)
    torch.testing.assert_close(load_teacher(TINY, weights=meta).encode_image(images),
                               teacher.encode_image(images), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*deprecated:FutureWarning")
def test_torchscript_archive_with_gelu_keeps_gelu(tiny, images, tmp_path):
    path = tmp_path / "gelu_ts.pt"
    tokens = torch.zeros(1, 77, dtype=torch.long)
    torch.jit.save(torch.jit.trace_module(tiny.clip, {"encode_text": (tokens,)}), str(path))
    assert read_torchscript_weights(path)[1] is False
    torch.testing.assert_close(load_teacher(TINY, weights=path).encode_image(images), tiny.encode_image(images),
                               rtol=0, atol=0)


def test_missing_and_directory_weights(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_teacher(TINY, weights=tmp_path / "nope.pt")
    with pytest.raises(UserError, match="is a directory"):
        load_teacher(TINY, weights=tmp_path)


def test_garbage_and_non_state_dict_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(UserError, match="not a readable"):
        load_teacher(TINY, weights=garbage)
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(UserError, match="not a state dict"):
        load_teacher(TINY, weights=listing)
    mixed = tmp_path / "mixed.pt"
    torch.save({"visual.proj": torch.zeros(2), "note": "hello"}, mixed)
    with pytest.raises(UserError, match="not tensors"):
        load_teacher(TINY, weights=mixed)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_weights_file_cannot_run_code(tmp_path):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"visual.proj": _RunsCode(str(marker))}, f, protocol=2)
    with pytest.raises(UserError, match="not a readable"):
        load_teacher(TINY, weights=evil)
    assert not marker.exists()


def test_torchscript_looking_file_cannot_run_code(tmp_path):
    marker, evil = tmp_path / "pwned", tmp_path / "evil_ts.pt"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("archive/code/__torch__/m.py", "")
        zf.writestr("archive/data.pkl", pickle.dumps({"w": _RunsCode(str(marker))}, protocol=2))
    with pytest.raises(UserError, match="refusing to load"):
        load_teacher(TINY, weights=evil)
    assert not marker.exists()


def test_wrong_architecture_files(tiny, tmp_path):
    sd = {k: v for k, v in tiny.clip.state_dict().items() if ".resblocks.1." not in k}
    sd["extra.weight"] = torch.zeros(1)
    cut = tmp_path / "cut.pt"
    torch.save(sd, cut)
    with pytest.raises(UserError) as err:
        load_teacher(TINY, weights=cut)
    msg = str(err.value)
    assert str(cut) in msg and "missing keys" in msg and "1 unexpected keys (extra.weight)" in msg
    assert "\n" not in msg


def test_tiny_weights_for_vit_b16_are_refused(tiny_file):
    with pytest.raises(UserError, match="shape mismatches.*teacher model name"):
        load_teacher("ViT-B-16", weights=tiny_file)


# ---- configuration errors and the random teacher ----------------------------------------
def test_no_weights_source_is_an_error():
    with pytest.raises(UserError, match="--teacher-weights FILE.*pretrained: none"):
        load_teacher(TINY)


def test_random_teacher_warns(caplog):
    with caplog.at_level(logging.WARNING):
        _tiny()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("meaningless" in r.getMessage() for r in warnings)
    assert not any("initialized randomly" in r.getMessage() for r in warnings)  # open_clip's, misleading


def test_weights_file_does_not_warn_random(tiny_file, caplog):
    with caplog.at_level(logging.WARNING):
        load_teacher(TINY, weights=tiny_file, pretrained="none")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_unknown_model_tag_and_options():
    with pytest.raises(UserError, match="unknown open_clip model"):
        load_teacher("ViT-Q-99", pretrained="none")
    with pytest.raises(UserError, match="not an open_clip pretrained tag"):
        load_teacher("ViT-B-16", pretrained="no-such-tag")
    with pytest.raises(UserError, match="precision"):
        _tiny(precision="fp8")
    with pytest.raises(UserError, match="input_norm"):
        _tiny(input_norm="raw")
    with pytest.raises(UserError, match="text_cache_size"):
        _tiny(text_cache_size=-1)


def test_pretrained_tag_without_hub_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # fail at once instead of retrying
    with pytest.raises(UserError, match="no network.*--teacher-weights FILE"):
        load_teacher("ViT-B-16", pretrained="openai")
