"""Teacher training's contrastive loss across ranks (open_clip's ClipLoss with all-gather): two real
gloo ranks each hold half of a batch; their logits are [B_local, B_global], and the mean of their
losses and their gradients (as DeepSpeed averages them) are those of the loss over the whole batch
on one rank."""
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from subprocesses import free_port
from uniemox.losses.clip_contrastive import CappedClipLoss  # light imports: each rank is a spawned process

B, D, SCALE = 6, 8, 20.0
SETTINGS = [  # (local_loss, gather_with_grad, ranks whose terms reach an embedding's gradient)
    (True, True, 2),    # the default (open_clip's large runs)
    (False, True, 2),
    (False, False, 1),  # open_clip's own defaults: only the rank's own terms
]


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)


def rank_worker(rank, world, port, out):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for local_loss, gather_with_grad, _ in SETTINGS:
            image, text = (x.chunk(world)[rank].clone().requires_grad_() for x in batch())
            loss_fn = CappedClipLoss(rank, world, local_loss, gather_with_grad)
            loss = loss_fn(image, text, torch.tensor(SCALE))
            loss.backward()
            # numpy copies travel by value (a tensor's shared memory would leave with the process)
            out.put(((local_loss, gather_with_grad), rank, loss_fn.logits_shape, loss.detach().numpy(),
                     image.grad.numpy(), text.grad.numpy()))
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks():
    """{(local_loss, gather_with_grad): [rank 0's (logits shape, loss, image grad, text grad), rank 1's]}"""
    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=rank_worker, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted((out.get(timeout=300) for _ in range(2 * len(SETTINGS))), key=lambda r: r[1])
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    by_setting = {}
    for r in results:
        by_setting.setdefault(r[0], []).append(r[2:])
    return by_setting


@pytest.mark.parametrize("local_loss,gather_with_grad,ranks_per_gradient", SETTINGS)
def test_two_ranks_contrast_with_both_ranks_captions(two_ranks, local_loss, gather_with_grad, ranks_per_gradient):
    results = two_ranks[local_loss, gather_with_grad]
    assert [r[0] for r in results] == [(B // 2 if local_loss else B, B)] * 2  # [images, every caption]

    image, text = (x.clone().requires_grad_() for x in batch())
    full = CappedClipLoss()(image, text, torch.tensor(SCALE))  # one rank, the whole batch
    full.backward()
    torch.testing.assert_close(torch.tensor(sum(r[1] for r in results) / 2), full.detach())
    # DeepSpeed averages the ranks' gradients (/ 2). With gather_with_grad the all-gather's backward
    # sums each embedding's terms over both ranks: the average is the whole batch's gradient;
    # without it only the rank's own terms arrive: half of it
    share = ranks_per_gradient / 2
    torch.testing.assert_close(torch.from_numpy(np.concatenate([r[2] for r in results])) / 2, image.grad * share)
    torch.testing.assert_close(torch.from_numpy(np.concatenate([r[3] for r in results])) / 2, text.grad * share)


def test_one_rank_loss_is_the_batch_against_itself():
    image, text = batch()
    loss_fn = CappedClipLoss()
    loss_fn(image, text, torch.tensor(SCALE))
    assert loss_fn.logits_shape == (B, B)
