"""The data position carried to another layout (uniemox/data/elastic.py), on real shards: a run
read by some ranks x workers stops, continues on others (once or twice), and every sample of
each epoch is consumed exactly once. The loaders of all ranks run in this process."""
from collections import Counter

import pytest

from uniemox.data.loader import build_pretrain_loader
from uniemox.data.sample import ensure_sample_shards
from uniemox.errors import UserError


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return ensure_sample_shards(str(tmp_path_factory.mktemp("cache")), images_per_class_per_split=6, shard_size=4)


def loaders(shards, world, workers, batch, states=None, **kw):
    kw = dict(dict(image_size=32, shuffle_buffer=7, seed=3), **kw)
    out = [build_pretrain_loader(shards, batch, num_workers=workers, rank=r, world_size=world, **kw)
           for r in range(world)]
    for loader in out:
        if states is not None:
            loader.load_elastic(states)
    return out


def consume(ranks, steps, seen):
    """``steps`` batches from every rank (as the trainer takes them); (key, epoch) into ``seen``."""
    streams = [loader.endless() for loader in ranks]
    for _ in range(steps):
        for stream in streams:
            batch = next(stream)
            seen.update(zip(batch["key"], batch["epoch"].tolist()))
    return [loader.state_dict() for loader in ranks]


def epoch_keys(seen, epoch):
    return Counter({key: n for (key, e), n in seen.items() if e == epoch})


def assert_each_sample_once_per_epoch(seen, states, complete_at_least=1):
    """Epochs every worker has left: all 48 samples once each; those under way: none twice."""
    done = min(w["epoch"] for state in states for w in state["workers"])
    assert done >= complete_at_least
    for epoch in range(max(e for _, e in seen) + 1):
        counts = epoch_keys(seen, epoch)
        assert set(counts.values()) == {1}, f"epoch {epoch}: {[k for k, n in counts.items() if n > 1]} twice"
        if epoch < done:
            assert len(counts) == 48, f"epoch {epoch}: {48 - len(counts)} samples never consumed"


@pytest.mark.parametrize("layouts", [
    [(2, 1, 4), (1, 0, 8)],             # 2 ranks x 1 worker -> 1 rank in-process, same global batch
    [(1, 2, 8), (2, 1, 4)],             # 1 rank x 2 workers -> 2 ranks
    [(2, 2, 3), (3, 1, 2), (1, 3, 5)],  # twice in a row: the carried remainder is carried again
])
def test_every_sample_of_each_epoch_once_across_layouts(shards, layouts):
    seen, states = Counter(), None
    for i, (world, workers, batch) in enumerate(layouts):
        ranks = loaders(shards, world, workers, batch, states)
        states = consume(ranks, 5 if i < len(layouts) - 1 else 16, seen)
    assert_each_sample_once_per_epoch(seen, states)


def test_an_epoch_under_way_for_some_workers_only(shards):
    """Workers in different epochs (one has begun the next) at the save: both epochs carried."""
    seen = Counter()
    ranks = loaders(shards, 1, 2, 4, shuffle_buffer=3)
    states = consume(ranks, 13, seen)  # 52 samples: past the 48 of epoch 0 for one worker at least
    assert sorted(w["epoch"] for w in states[0]["workers"]) == [0, 1]  # 7 batches of 4 > a worker's 24
    ranks = loaders(shards, 2, 1, 4, states, shuffle_buffer=3)
    assert sorted(ranks[0].carry) == sorted({w["epoch"] for w in states[0]["workers"]})
    assert_each_sample_once_per_epoch(seen, consume(ranks, 14, seen), complete_at_least=2)


def test_same_layout_still_resumes_to_the_same_batches(shards):
    def keys(ranks, steps):
        streams = [loader.endless() for loader in ranks]
        return [next(stream)["key"] for _ in range(steps) for stream in streams]

    straight = keys(loaders(shards, 2, 1, 4), 7)
    ranks = loaders(shards, 2, 1, 4)
    keys(ranks, 3)
    states = [loader.state_dict() for loader in ranks]
    again = [build_pretrain_loader(shards, 4, num_workers=1, rank=r, world_size=2, image_size=32, shuffle_buffer=7,
                                   seed=3, start_state=states[r]) for r in range(2)]
    assert keys(again, 4) == straight[6:]


def test_other_data_is_refused(shards, tmp_path):
    states = consume(loaders(shards, 2, 1, 4), 2, Counter())
    with pytest.raises(UserError, match="seed was 3 now 4"):
        loaders(shards, 1, 0, 8, states, seed=4)


def test_resampled_streams_go_on_from_the_next_epoch(shards):
    states = consume(loaders(shards, 2, 1, 4, resampled=True), 3, Counter())
    ranks = loaders(shards, 3, 1, 4, states, resampled=True)
    seen = Counter()
    consume(ranks, 2, seen)
    assert min(e for _, e in seen) == max(w["epoch"] for s in states for w in s["workers"]) + 1
