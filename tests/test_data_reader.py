"""The reader on the synthetic sample shards: resume, node/worker split, errors, prompts."""
import json

import pytest
import torch

from uniemox.data import (build_labeled_loader, build_pretrain_loader, ensure_sample_shards, epoch_size,
                          expand_urls, load_manifest, shard_urls)
from uniemox.data.prompts import MIKELS_EMOTIONS, build_prompt
from uniemox.data.sample import make_image
from uniemox.errors import UserError


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 8 classes x 5 images per split, 3 per shard: 14 train shards of uneven fill
    return ensure_sample_shards(str(tmp_path_factory.mktemp("cache")), images_per_class_per_split=5, shard_size=3)


def _fingerprint(batch):
    return (tuple(batch["key"]), round(float(batch["scene"].sum()), 3), round(float(batch["person"].sum()), 3))


def _take(loader, n):
    out, it = [], iter(loader)
    for _ in range(n):
        out.append(_fingerprint(next(it)))
    return out


@pytest.mark.parametrize("resampled,stop_at", [(False, 5), (False, 13), (True, 7)])
def test_resume_gives_the_uninterrupted_batches(shards, resampled, stop_at):
    """Stop after `stop_at` batches (13: in the second epoch), save the position, rebuild the
    loader from it: the next batches (keys and augmented pixels) equal the uninterrupted run."""
    kw = dict(urls=shard_urls(shards), batch_size=3, num_workers=2, image_size=32, shuffle_buffer=8, seed=7,
              resampled=resampled, epoch_batches=6 if resampled else None)
    total = 20

    def run(loader, n):
        out = []
        while len(out) < n:
            for batch in loader:
                out.append(_fingerprint(batch))
                if len(out) == n:
                    break
        return out

    full = run(build_pretrain_loader(**kw), total)
    first = build_pretrain_loader(**kw)
    head = run(first, stop_at)
    state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON round trip (checkpoints)
    resumed = build_pretrain_loader(**kw, start_state=state)
    tail = run(resumed, total - stop_at)
    assert head == full[:stop_at]
    assert tail == full[stop_at:]
    assert len({fp[0] for fp in full}) > 10  # not one batch repeated


def test_epochs_differ_and_cover_the_split(shards):
    loader = build_pretrain_loader(shard_urls(shards), batch_size=4, num_workers=2, image_size=32,
                                   shuffle_buffer=8, drop_last=False)
    epochs = [[k for b in loader for k in b["key"]] for _ in range(2)]
    n = load_manifest(shards)["splits"]["train"]["count"]
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == n == len(epochs[0])
    assert epochs[0] != epochs[1]  # reshuffled per epoch
    assert loader.epoch == 2


def test_split_by_node_is_a_partition(shards):
    keys = []
    for rank in range(2):
        loader = build_pretrain_loader(shard_urls(shards), batch_size=2, num_workers=2, image_size=32,
                                       rank=rank, world_size=2, drop_last=False, shuffle_buffer=4)
        keys.append({k for b in loader for k in b["key"]})
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    assert len(keys[0] | keys[1]) == load_manifest(shards)["splits"]["train"]["count"]


def test_too_few_shards_is_a_clear_error(shards):
    urls = shard_urls(shards)[:3]
    with pytest.raises(UserError, match="3 shard\\(s\\) for 2 rank\\(s\\) x 2 worker\\(s\\)"):
        build_pretrain_loader(urls, batch_size=2, num_workers=2, world_size=2)
    loader = build_pretrain_loader(urls, batch_size=2, num_workers=2, world_size=2, resampled=True,
                                   image_size=32, epoch_batches=2)
    assert len(list(loader)) == 2  # resampled draws shards with replacement: fine


def test_bad_reader_input(shards, tmp_path):
    with pytest.raises(UserError, match="shard not found"):
        build_pretrain_loader(str(tmp_path / "x-{000..001}.tar"), batch_size=2)
    with pytest.raises(UserError, match="is a folder without manifest.json"):
        build_pretrain_loader(str(tmp_path), batch_size=2)
    loader = build_pretrain_loader(shard_urls(shards), batch_size=2, num_workers=2, image_size=32)
    state = loader.state_dict()
    other = build_pretrain_loader(shard_urls(shards), batch_size=2, num_workers=1, image_size=32)
    with pytest.raises(UserError, match="num_workers was 2 now 1"):
        other.load_state_dict(state)
    with pytest.raises(UserError, match="batch of 1000"):
        list(build_pretrain_loader(shard_urls(shards), batch_size=1000, num_workers=2))


def test_texts_follow_the_side_car_attributes(shards):
    loader = build_pretrain_loader(shard_urls(shards, ("val",)), batch_size=8, num_workers=0, image_size=32)
    batch = next(iter(loader))
    for key, text, label, has_person in zip(batch["key"], batch["text"], batch["label"], batch["has_person"]):
        name, split, index = key.split("_")[-3:]
        _, meta = make_image(MIKELS_EMOTIONS.index(name), split, int(index))
        assert int(label) == MIKELS_EMOTIONS.index(name)
        assert text == build_prompt(name, meta)
        assert bool(has_person) == (meta["person_box"] is not None)
        assert text.endswith(f"The overall emotion conveyed is {name}.")


def test_labeled_loader_eval_sees_every_sample_once(shards):
    loader = build_labeled_loader(shard_urls(shards, ("test",)), batch_size=7, num_workers=2, image_size=40)
    batches = list(loader)
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == len(set(keys)) == load_manifest(shards)["splits"]["test"]["count"]
    assert batches[0]["image"].shape[1:] == (3, 40, 40) and batches[0]["label"].dtype == torch.int64


def test_throughput_measure_runs(shards):
    from uniemox.bench.loader import measure
    ours, plain = measure(shard_urls(shards), workers=0, batch=4, image_size=32, batches=2, warmup=1)
    assert ours["samples_per_s"] > 0 and ours["batches"] == 2 and ours["skipped"] == 0
    assert plain["variant"] == "plain" and plain["samples_per_s"] > 0


def test_url_forms_and_epoch_size(shards):
    train = shard_urls(shards)
    assert expand_urls(shards) == train  # a shard-set folder means its TRAIN split
    pattern = train[0].replace("000000.tar", "{000000..000002}.tar")
    assert expand_urls(pattern) == train[:3] and expand_urls("::".join(train[:2])) == train[:2]
    counts = load_manifest(shards)["splits"]
    assert epoch_size(shards) == counts["train"]["count"]
    assert epoch_size(train[:2]) == sum(s["count"] for s in counts["train"]["shards"][:2])


def test_endless_runs_across_epochs(shards):
    loader = build_pretrain_loader(shards, batch_size=8, num_workers=2, image_size=32, drop_last=False)
    per_epoch = len(list(loader))
    batches = loader.endless()
    keys = [k for _ in range(2 * per_epoch + 1) for k in next(batches)["key"]]
    assert loader.epoch == 3 and len(keys) > 2 * epoch_size(shards)


def test_without_the_person_view_the_scene_views_are_unchanged(shards):
    urls = shard_urls(shards, ("train",))
    both = next(iter(build_pretrain_loader(urls, batch_size=4, num_workers=1, image_size=32, shuffle_buffer=8)))
    scene_only = next(iter(build_pretrain_loader(urls, batch_size=4, num_workers=1, image_size=32,
                                                 shuffle_buffer=8, person_view=False)))
    assert "person" in both and "person" not in scene_only
    assert scene_only["key"] == both["key"] and torch.equal(scene_only["scene"], both["scene"])
    assert scene_only["text"] == both["text"] and torch.equal(scene_only["has_person"], both["has_person"])
