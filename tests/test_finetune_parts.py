"""Fine-tuning parts on real data and models: label fraction, layer-wise lr decay, the
augmentation's determinism, the linear probe's folded head, the loss choices."""
import json
import random
from collections import Counter

import numpy as np
import pytest
import torch

from uniemox.data import build_labeled_loader, ensure_sample_shards, load_manifest, shard_urls
from uniemox.data.tarstream import RateLimitedLog, iter_shards
from uniemox.errors import UserError
from uniemox.models import create_encoder
from uniemox.finetune.augment import FinetuneAugment
from uniemox.finetune.heads import LinearProbe, load_init
from uniemox.finetune.data import prepare_data, select_fraction
from uniemox.finetune.recipe import build_criterion, param_groups

TINY = dict(img_size=32, depth=3)


@pytest.fixture(scope="module")
def shards():
    return ensure_sample_shards()


def _labels_of(urls):
    return {s["__key__"]: json.loads(s["json"])["label"] for s in iter_shards(urls, Counter(), RateLimitedLog())}


def test_label_fraction_is_stratified_and_reproducible(shards, tmp_path):
    train = shard_urls(shards, ("train",))
    labels = _labels_of(train)
    kept = select_fraction(train, 0.25, seed=3)
    assert {c: len(k) for c, k in kept.items()} == {c: 8 for c in range(8)}  # 32 per class -> 8
    assert all(labels[k] == c for c, keys in kept.items() for k in keys)
    assert kept == select_fraction(train, 0.25, seed=3)
    assert kept != select_fraction(train, 0.25, seed=4)
    assert all(len(k) == 1 for k in select_fraction(train, 0.001, seed=0).values())  # at least one per class

    data = prepare_data(shards, None, str(tmp_path), "train", "val", "test", 0.25, 3, 256, 1, 0)
    assert data.train_count == 64 and data.fraction["per_class"] == {c: 8 for c in load_manifest(shards)["classes"]}
    assert data.val == shard_urls(shards, ("val",)) and data.test == shard_urls(shards, ("test",))
    assert sorted(_labels_of(data.train)) == sorted(k for ks in kept.values() for k in ks)  # bytes copied as is
    loader = build_labeled_loader(data.train, 16, num_workers=0, image_size=32)
    assert sum(len(b["key"]) for b in loader) == 64
    with pytest.raises(UserError, match="label-fraction"):
        select_fraction(train, 1.5, 0)


def _group_table(model, groups):
    """{frozenset of parameter names: (lr_scale, weight_decay)} of optimizer groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {frozenset(names[id(p)] for p in g["params"]): (g["lr_scale"], g["weight_decay"]) for g in groups}


@pytest.mark.parametrize("global_pool,num_classes", [("avg", 8), ("token", 0)])
def test_layer_decay_groups_are_the_rule_of_mae_and_beit(global_pool, num_classes):
    """The fine-tuning optimizer's groups, parameter by parameter: layer 0 = the embeddings, layer
    i + 1 = block i, layer L + 1 = what follows the blocks; one group per (layer, decay or not), lr
    scale 0.75^(L + 1 - layer), weight decay on weight matrices only; frozen parameters in no group."""
    model = create_encoder("uniemox_vit_tiny_patch16", num_classes=num_classes, global_pool=global_pool, **TINY)
    model.blocks[1].norm1.weight.requires_grad_(False)
    expected = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = 0 if name.startswith(("cls_token", "patch_embed")) else \
            int(name.split(".")[1]) + 1 if name.startswith("blocks.") else 4
        decay = 0.05 if param.ndim > 1 and name != "cls_token" else 0.0
        expected.setdefault((layer, decay), set()).add(name)
    want = {frozenset(v): (0.75 ** (4 - layer), decay) for (layer, decay), v in expected.items()}
    assert _group_table(model, param_groups(model, False, 0.05, 0.75)) == want
    assert len(want) == (10 if num_classes else 9) and "blocks.1.norm1.weight" not in set().union(*want)


def test_augmentation_is_a_function_of_the_sample_rng_and_leaves_global_rngs_alone():
    from PIL import Image
    img = Image.fromarray((torch.rand(80, 96, 3) * 255).byte().numpy())
    aug = FinetuneAugment(32, (0.08, 1.0), "rand-m9-mstd0.5-inc1")
    def seed_all():
        random.seed(11)
        np.random.seed(11)
        torch.manual_seed(11)
    seed_all()
    before = (random.random(), np.random.rand(), torch.rand(1))
    seed_all()
    a = aug(img, random.Random("s:1"))
    assert (random.random(), np.random.rand(), torch.rand(1)) == before  # caller's streams unchanged
    b = aug(img, random.Random("s:1"))
    c = aug(img, random.Random("s:2"))
    assert a.shape == (3, 32, 32) and a.dtype == torch.uint8 and torch.equal(a, b) and not torch.equal(a, c)


def test_batch_erasing_is_seeded_on_the_device_and_leaves_global_rngs_alone():
    from uniemox.finetune.augment import BatchErasing
    erase = BatchErasing(1.0, torch.device("cpu"))
    images = torch.zeros(4, 3, 32, 32)
    random.seed(3)
    torch.manual_seed(3)
    before = (random.random(), torch.rand(1))
    random.seed(3)
    torch.manual_seed(3)
    a = erase(images.clone(), seed=7)
    assert (random.random(), torch.rand(1)) == before  # the caller's streams are untouched
    b, c = erase(images.clone(), seed=7), erase(images.clone(), seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    erased = (a != 0).flatten(1).any(1)
    assert erased.all()  # probability 1: every image got its box of noise
    assert ((a != 0).float().mean() < 0.5)  # a box, not the whole image


def test_train_loader_batches_and_resume_position(shards):
    aug = FinetuneAugment(32, (0.08, 1.0), "rand-m9-mstd0.5-inc1")
    urls = shard_urls(shards, ("train",))

    def build():
        return build_labeled_loader(urls, 8, 1, 32, train=True, shuffle_buffer=64, view_transform=aug)

    loader = build()
    it = loader.endless()
    first = next(it)
    state = loader.state_dict()
    expected = next(it)
    again = build()
    again.load_state_dict(state)
    got = next(again.endless())
    assert got["key"] == expected["key"] and torch.equal(got["image"], expected["image"])
    # the recipe, not the reader's plain crop + flip, made the views (same samples, same order)
    plain = next(build_labeled_loader(urls, 8, 1, 32, train=True, shuffle_buffer=64).endless())
    assert plain["key"] == first["key"] and not torch.equal(plain["image"], first["image"])


def test_linear_probe_folds_its_batchnorm_into_a_plain_classifier():
    encoder = create_encoder("uniemox_vit_tiny_patch16", global_pool="token", **TINY)
    probe = LinearProbe(encoder, 5)
    probe.train()
    x = torch.randn(12, 3, 32, 32)
    for _ in range(3):  # running statistics move away from 0 / 1
        probe(x)
    probe.eval()
    plain = create_encoder("uniemox_vit_tiny_patch16", num_classes=5, global_pool="token", **TINY)
    plain.load_state_dict(probe.folded_state())
    assert torch.allclose(plain.eval()(x), probe(x), atol=1e-4)
    assert [n for n, p in probe.named_parameters()] == ["head.1.weight", "head.1.bias"]  # encoder outside
    assert all(g.get("always_adapt") is not None for g in param_groups(probe, True, 0.0, 1.0))


def test_init_from_a_classifier_of_another_task_leaves_the_head_fresh(tmp_path):
    from safetensors.torch import save_file
    other = create_encoder("uniemox_vit_tiny_patch16", num_classes=3, **TINY)
    save_file(other.state_dict(), str(tmp_path / "other.safetensors"))
    model = create_encoder("uniemox_vit_tiny_patch16", num_classes=8, **TINY)
    head = model.head.weight.clone()
    report = load_init(model, str(tmp_path / "other.safetensors"))
    assert torch.equal(model.head.weight, head) and "head.weight" in report.missing
    assert torch.equal(model.blocks[0].attn.qkv.weight, other.blocks[0].attn.qkv.weight)


def test_losses():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 0])
    soft = torch.nn.functional.one_hot(labels, 3).float()
    ce = build_criterion(False, False, 0.0)(logits, labels)
    assert torch.allclose(build_criterion(False, True, 0.1)(logits, soft), ce)  # soft one-hot = CE
    assert not torch.allclose(build_criterion(False, False, 0.1)(logits, labels), ce)
    assert torch.allclose(build_criterion(True, False, 0.0)(logits, soft),
                          torch.nn.functional.binary_cross_entropy_with_logits(logits, soft))


def test_rand_augment_survives_magnitude_10_posterize():
    """timm's increasing posterize keeps 0 bits at magnitude 10, which Pillow >= 11 refuses."""
    from PIL import Image
    aug = FinetuneAugment(32, (0.08, 1.0), "rand-m10-n1-inc1")
    post = [op for op in aug.rand_augment.ops if op.name == "PosterizeIncreasing"]
    assert post
    img = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    assert post[0].aug_fn(img, 0).getextrema() == ((0, 0), (0, 0), (0, 0))
    for i in range(40):  # one op per image at magnitude 10: posterize among them
        aug(img, random.Random(i))
