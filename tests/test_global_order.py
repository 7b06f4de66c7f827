"""Each epoch's order is one permutation of the whole data set: global batch g is its g-th slice of
world x per-rank batch samples, split across ranks, so the samples and their flips do not depend on the world
size; a position saved on one world size continues on another; the DALI loader gives the torch loader's samples."""

import logging

import pytest
import torch

from fr.config import DataConfig
from fr.data.base import epoch_order, flip_coin, sample_seed
from fr.data.loader import build_loader
from fr.distributed import DistEnv
from tests.helpers.images import flip_probe, png

IDENTITIES, PER_IDENTITY = 5, 8  # 40 images: 40 // 12 = 3 global batches of 12, 4 images dropped per epoch
SEED = 7


@pytest.fixture(scope="module")
def data_dir(record_dir):
    """Image k (key k+1, label k // 8) is flip_probe(k): a grey 3k on top naming it, a black/white bottom
    that shows a flip. PNG, so every decoder gives the same pixels."""
    return record_dir(IDENTITIES, PER_IDENTITY, image=lambda k: png(flip_probe(k)))


def make_loaders(root, world, batch, kind="torch"):
    if kind == "dali":
        pytest.importorskip("nvidia.dali")  # a guard only: the `test` extra installs DALI
    cfg = DataConfig(
        root=str(root),
        loader=kind,
        batch_size=batch,
        num_workers=0 if kind == "torch" else 1,
        cache_dir=str(root) + "_cache",
    )
    return [build_loader(cfg, DistEnv(rank=rank, world_size=world), seed=SEED) for rank in range(world)]


def samples(images, labels):
    """(image id, mirrored) of each image of a batch, checking its label."""
    out = []
    for image, label in zip(images, labels.tolist()):
        k = round((float(image[0, 0, 0]) + 1) * 127.5 / 3)
        assert label == k // PER_IDENTITY
        out.append((k, float(image[:, 100, 10].mean()) > 0))  # white on the bottom left: mirrored
    return out


def global_batches(loaders, epoch):
    """The epoch's global batches (pixels, labels): each rank's batch g concatenated in rank order."""
    per_rank = []
    for loader in loaders:
        loader.set_epoch(epoch)
        per_rank.append(list(loader))
    assert len({len(batches) for batches in per_rank}) == 1  # every rank steps the same number of times
    return [
        (torch.cat([batches[g][0] for batches in per_rank]), torch.cat([batches[g][1] for batches in per_rank]))
        for g in range(len(per_rank[0]))
    ]


def same(got, expected):
    assert len(got) == len(expected)
    for (images, labels), (ref_images, ref_labels) in zip(got, expected):
        assert torch.equal(labels, ref_labels) and torch.equal(images, ref_images)  # samples, order and flips


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_global_batch_is_the_same_slice_of_one_permutation(data_dir, world):
    """Per-rank sharding would differ here: 40 images over 3 ranks are 13 per rank, 3 batches of 4 from each
    rank's own 13. Rank r's batch g must be samples [12 g + b r, 12 g + b (r + 1)) of the epoch's order."""
    batch = 12 // world
    loaders = make_loaders(data_dir, world, batch)
    assert [len(loader) for loader in loaders] == [3] * world
    orders, flips = [], []
    for epoch in range(2):
        order = epoch_order(IDENTITIES * PER_IDENTITY, SEED, epoch).tolist()  # image k is the index's k-th
        assert sorted(order) == list(range(40))
        for rank, loader in enumerate(loaders):
            loader.set_epoch(epoch)
            got = [samples(images, labels) for images, labels in loader]
            expected = [
                [
                    (k, flip_coin(sample_seed(SEED, epoch, k)))
                    for k in order[12 * g + batch * rank : 12 * g + batch * (rank + 1)]
                ]
                for g in range(3)
            ]
            assert got == expected
            flips += [flipped for batch_samples in got for _, flipped in batch_samples]
        orders.append(order)
    assert orders[0] != orders[1]  # a new order each epoch
    assert 12 <= sum(flips) <= 60  # fair coins (72 of them), so flipped and plain images were both compared


@pytest.mark.parametrize("kind", ["torch", "dali"])
def test_a_position_saved_on_two_ranks_continues_on_one_and_on_three(data_dir, kind):
    """Global batch 12 everywhere: 2 x 6 when saved, 1 x 12 and 3 x 4 when resumed."""
    uninterrupted = make_loaders(data_dir, 1, 12, kind)
    expected = global_batches(uninterrupted, 0) + global_batches(uninterrupted, 1)
    first = make_loaders(data_dir, 2, 6, kind)
    head = global_batches(first, 0)
    for loader in first:
        loader.set_epoch(1)
    step = [next(iter(loader)) for loader in first]  # one step into epoch 1
    head.append((torch.cat([x for x, _ in step]), torch.cat([y for _, y in step])))
    state = first[0].state_dict()
    assert {key: state[key] for key in ("epoch", "offset", "global_batch", "seed", "step")} == {
        "epoch": 1,
        "offset": 12,
        "global_batch": 12,
        "seed": SEED,
        "step": 4,
    }
    for world, batch in ((1, 12), (3, 4)):
        resumed = make_loaders(data_dir, world, batch, kind)
        for loader in resumed:
            loader.load_state_dict(state)  # the trainer then sets the epoch it saved: the position stays
        same(head + global_batches(resumed, 1), expected)


def test_another_global_batch_continues_at_its_next_batch_with_a_warning_naming_the_step(data_dir, caplog):
    first = make_loaders(data_dir, 2, 6)  # global batch 12
    iterators = [iter(loader) for loader in first]
    for it in iterators:
        next(it)  # step 1: samples 0-11 of epoch 0
    state = first[0].state_dict()
    uninterrupted = make_loaders(data_dir, 1, 8)  # what a run with global batch 8 sees in epoch 0
    expected = global_batches(uninterrupted, 0)
    resumed = make_loaders(data_dir, 2, 4)  # global batch 8: its batch 2 (samples 16-23) is the next to start
    with caplog.at_level(logging.WARNING):
        for loader in resumed:
            loader.load_state_dict(state)
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(messages) == 2  # one per rank
    assert "global batch of 12" in messages[0] and "from step 2 on" in messages[0]
    assert "continues at sample 16" in messages[0] and "4 samples skipped" in messages[0]
    same(global_batches(resumed, 0), expected[2:])
    assert [loader.epoch for loader in resumed] == [1, 1]

    # Saved after 2 of 3 batches of 12 (sample 24): batches of 16 fit twice in 40 images, none starts at or
    # after 24, so the epoch ends there.
    for it in iterators:
        next(it)
    caplog.clear()
    late = make_loaders(data_dir, 1, 16)
    with caplog.at_level(logging.WARNING):
        late[0].load_state_dict(first[0].state_dict())
    assert "from step 3 on" in caplog.text and "epoch 0 ends there" in caplog.text
    late[0].set_epoch(0)
    assert list(late[0]) == [] and late[0].epoch == 1


@pytest.mark.parametrize("world", [1, 2])
def test_the_dali_loader_gives_the_torch_loaders_samples_in_the_same_order_with_the_same_flips(data_dir, world):
    torch_loaders = make_loaders(data_dir, world, 12 // world)
    dali_loaders = make_loaders(data_dir, world, 12 // world, "dali")
    for epoch in range(2):
        for torch_loader, dali_loader in zip(torch_loaders, dali_loaders):
            torch_loader.set_epoch(epoch)
            dali_loader.set_epoch(epoch)
            expected = [samples(images, labels) for images, labels in torch_loader]
            assert [samples(images, labels) for images, labels in dali_loader] == expected
