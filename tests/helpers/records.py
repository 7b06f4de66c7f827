"""Record sets in the insightface layout whose pixels name each image, and reading those names back."""

import numpy as np
import torch

from fr.data.writer import InsightfaceRecordWriter
from tests.helpers.images import flat, jpeg

GREY_STEP = 3  # image k of a grey set is a flat grey of value 3k


def grey_image(k) -> bytes:
    return jpeg(flat(GREY_STEP * k))


def write_record_set(root, identities, per_identity, image=grey_image, bad=None):
    """Write `identities` x `per_identity` images to `root`: image k (key k + 1, label k // per_identity) is
    `image(k)`, or the payload `bad[k]` where `bad` has one (a corrupt image, say). Returns `root`."""
    bad = bad or {}
    with InsightfaceRecordWriter(str(root)) as writer:
        for c in range(identities):
            ids = range(c * per_identity, (c + 1) * per_identity)
            writer.add_identity([bad[k] if k in bad else image(k) for k in ids])
    return root


def image_ids(images, labels=None, per_identity=None):
    """The ids k of a batch of grey-set images in [-1, 1], checking that each image is flat, that its value is
    the exact conversion of 3k, and (given `labels`) that its label is its identity k // per_identity."""
    ids = []
    for i, image in enumerate(images):
        value = float(image[0, 0, 0])
        assert torch.equal(image, torch.full_like(image, value))
        k = round((value + 1) * 127.5 / GREY_STEP)
        assert value == np.float32(GREY_STEP * k) / np.float32(127.5) - np.float32(1)  # exact [-1, 1] conversion
        if labels is not None:
            assert int(labels[i]) == k // per_identity  # never a wrong label
        ids.append(k)
    return ids
