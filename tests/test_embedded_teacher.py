"""The packaged CLIP teacher ("uniemox-sample", trained by launch/train_teacher.py on the sample
set's train split): small, loaded without network, zero-shot well above chance on the sample
validation split, and the teacher of the main job's sample preset."""
import hashlib
import socket

import pytest
import torch

from uniemox.data import MIKELS_EMOTIONS, build_labeled_loader, build_pretrain_loader, ensure_sample_shards, shard_urls
from uniemox.data.prompts import TEMPLATE_SETS
from uniemox.data.transforms import model_input
from uniemox.errors import UserError
from uniemox.launch.pretrain import config_of, parse_args
from uniemox.exports.teacher import build_clip, embedded_card, embedded_weights, load_teacher
from uniemox.models.zero_shot import class_embeddings, zero_shot_accuracy

# The README states this threshold; chance is 1/8. The shipped teacher measured 0.977 (CPU).
ZERO_SHOT_THRESHOLD = 0.85


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("uniemox-clip-tiny-64", pretrained="uniemox-sample")


@pytest.fixture(scope="module")
def val_urls():
    return shard_urls(ensure_sample_shards(), ("val",))


def test_shipped_file_is_small_fp16_and_matches_its_card():
    model_name, path = embedded_weights("uniemox-sample")
    card = embedded_card("uniemox-sample")
    data = path.read_bytes()
    assert len(data) < 5 * 2**20 and len(data) == card["bytes"]
    assert hashlib.sha256(data).hexdigest() == card["sha256"]
    assert card["model"] == model_name == "uniemox-clip-tiny-64" and card["dtype"] == "fp16"
    assert card["seed"] == 0 and card["command"].startswith("python launch/train_teacher.py")
    assert card["zero_shot"]["accuracy"] >= ZERO_SHOT_THRESHOLD


def test_zero_shot_emotion_on_the_sample_val_split_is_well_above_chance(teacher, val_urls):
    loader = build_labeled_loader(val_urls, batch_size=64, num_workers=2, image_size=64)
    classes = class_embeddings(teacher.encode_text, teacher.tokenizer, MIKELS_EMOTIONS, TEMPLATE_SETS["method"])
    acc, n = zero_shot_accuracy(teacher.encode_image, classes, loader)
    assert n == 256
    assert acc >= ZERO_SHOT_THRESHOLD, acc
    # the shipped fp16 weights score what the training run measured on its fp32 master weights
    assert acc == pytest.approx(embedded_card("uniemox-sample")["zero_shot"]["accuracy"], abs=0.02)


def test_images_match_their_own_class_captions(teacher, val_urls):
    """What the main job distils: an image is closer to the full docs/method.md#pretraining captions of its own
    class than to the other classes' (class of the nearest caption in a batch of 64)."""
    loader = build_pretrain_loader(val_urls, batch_size=64, num_workers=1, image_size=64, shuffle_buffer=64)
    batch = next(iter(loader))
    scene = model_input(batch["scene"], torch.device("cpu"), torch.float32)
    sim = torch.nn.functional.normalize(teacher.encode_image(scene), dim=-1) @ \
        torch.nn.functional.normalize(teacher.encode_text(batch["text"]), dim=-1).t()
    nearest = batch["label"][sim.argmax(dim=1)]
    assert (nearest == batch["label"]).float().mean() >= 0.8


def test_loading_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the embedded teacher tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    t = load_teacher("uniemox-clip-tiny-64", pretrained="uniemox-sample", text_cache_size=0)
    assert t.source.startswith("embedded 'uniemox-sample'")
    out = t.encode_text(["The overall emotion conveyed is awe."])
    assert out.shape == (1, 64) and torch.isfinite(out).all()


def test_embedded_weights_are_loaded_not_random():
    a, _ = build_clip("uniemox-clip-tiny-64", pretrained="uniemox-sample")
    torch.manual_seed(123)
    b, _ = build_clip("uniemox-clip-tiny-64", pretrained="uniemox-sample")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_embedded_tag_refuses_another_model():
    with pytest.raises(UserError, match="belong to the model 'uniemox-clip-tiny-64'"):
        build_clip("ViT-B-16", pretrained="uniemox-sample")
    with pytest.raises(UserError, match="no embedded teacher weights"):
        embedded_weights("uniemox-nothing")


def test_main_job_sample_preset_uses_the_embedded_teacher():
    cfg = config_of(parse_args([]))
    assert cfg.data.shards is None  # the sample recipe: the embedded sample set
    assert (cfg.teacher.model, cfg.teacher.pretrained, cfg.teacher.weights) == (
        "uniemox-clip-tiny-64", "uniemox-sample", None)
    arch_size = cfg.model.arch["img_size"]
    t = load_teacher(cfg.teacher.model, pretrained=cfg.teacher.pretrained, input_norm=cfg.teacher.input_norm)
    assert t.image_size == (arch_size, arch_size)  # the teacher sees the scene view as it was trained
    # real data: no preset, so the user names a real teacher (weights file or open_clip tag)
    cfg = config_of(parse_args(["data.shards=/d/train-{000000..000003}.tar"]))
    assert cfg.teacher.pretrained is None and cfg.model.name == "uniemox_vit_large_patch16"
    # a weights file replaces the embedded teacher on the sample set too
    cfg = config_of(parse_args(["--teacher-weights", "/w/ViT-B-16.pt", "teacher.model=ViT-B-16"]))
    assert cfg.teacher.weights == "/w/ViT-B-16.pt"
