"""Groups of images that are the same picture: identical files, or near-duplicates (the same picture
resized, re-encoded, lightly cropped or edited), so that a split never trains on one copy and
tests on another.

A pair is a near-duplicate when both perceptual hashes of cnnpipe.data.fingerprint are within
MAX_BITS of each other and the two images, converted by the pipeline to small grey squares and
standardised (so a brighter or more contrasted copy is still a copy), differ by under
MAX_DIFFERENCE standard deviations per pixel on average. The hashes find the candidates among many
images at once; the pixels confirm them, because hashes of very small or simple images (8 px
digits, flat shapes) agree for images that are not the same picture. Candidates are found by
multi-index hashing: hashes within MAX_BITS bits agree exactly on at least one of MAX_BITS + 1
chunks of the hash, so only images sharing a chunk are compared.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from cnnpipe.core import preprocess
from cnnpipe.core.dataset import RawImage
from cnnpipe.data.parallel import Pool

MAX_BITS = 4  # of 64, in each of the two hashes
# Mean absolute difference of the standardised pixels at CONFIRM_SIZE: a resized and re-encoded
# copy differs by about 0.01, two drawings of a 4 among scikit-learn's digits by 0.1.
MAX_DIFFERENCE = 0.05
CONFIRM_SIZE = 16
BITS = 64


def _as_int(hashes: list[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


def candidate_pairs(phash: np.ndarray, dhash: np.ndarray) -> Iterator[tuple[int, int]]:
    """Index pairs (i < j) whose two hashes are each within MAX_BITS bits, each pair once."""
    chunks = MAX_BITS + 1
    width = -(-BITS // chunks)
    seen: set[tuple[int, int]] = set()
    for k in range(chunks):
        shift, mask = np.uint64(k * width), np.uint64((1 << width) - 1)
        keys = (phash >> shift) & mask
        order = np.argsort(keys, kind="stable")
        bounds = np.flatnonzero(np.diff(keys[order])) + 1
        for bucket in np.split(order, bounds):
            if len(bucket) < 2:
                continue
            bucket = np.sort(bucket)
            for n, i in enumerate(bucket[:-1]):
                rest = bucket[n + 1 :]
                close = (_popcount(phash[rest] ^ phash[i]) <= MAX_BITS) & (
                    _popcount(dhash[rest] ^ dhash[i]) <= MAX_BITS
                )
                for j in rest[close]:
                    pair = (int(i), int(j))
                    if pair not in seen:
                        seen.add(pair)
                        yield pair


def _thumbnails(root: Path, files: Sequence[str]) -> np.ndarray:
    """Standardised CONFIRM_SIZE px grey copies of the files under root, (N, 1, size, size)."""
    found = np.empty((len(files), 1, CONFIRM_SIZE, CONFIRM_SIZE), dtype=np.float32)
    for n, file in enumerate(files):
        pixels = preprocess.load(root / file, CONFIRM_SIZE, 1).astype(np.float32)
        found[n] = (pixels - pixels.mean()) / max(float(pixels.std()), 1.0)
    return found


def groups(images: list[RawImage], folder: Path, pool: Pool | None = None) -> list[list[int]]:
    """The groups (two images or more, indices into `images`, each sorted, in order of their
    first member) of identical files and confirmed near-duplicates; images of unknown hashes
    join only groups of identical files. The files are under `folder` (see
    cnnpipe.core.dataset.image_folder); the candidates' pixels are decoded on `pool`."""
    parent = list(range(len(images)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    by_md5: dict[str, int] = {}
    for i, image in enumerate(images):
        if image.md5:
            first = by_md5.setdefault(image.md5, i)
            if first != i:
                join(first, i)
    hashed = [i for i, image in enumerate(images) if image.phash and image.dhash]
    phash = _as_int([images[i].phash for i in hashed])
    dhash = _as_int([images[i].dhash for i in hashed])
    pairs = [(hashed[a], hashed[b]) for a, b in candidate_pairs(phash, dhash)]
    # Every image of a pair not already one file; some may not be needed once earlier pairs
    # have joined their groups, but decoding them all at once spreads over the workers.
    needed = sorted({i for pair in pairs if root(pair[0]) != root(pair[1]) for i in pair})
    decode = functools.partial(_thumbnails, folder)
    files = [images[i].file for i in needed]
    work = (pool or Pool(1)).map(decode, files, "process: near-duplicates confirmed")
    thumbnails = dict(zip(needed, (t for chunk in work for t in chunk), strict=True))
    for i, j in pairs:
        if root(i) == root(j):
            continue
        if float(np.abs(thumbnails[i] - thumbnails[j]).mean()) < MAX_DIFFERENCE:
            join(i, j)
    members: dict[int, list[int]] = {}
    for i in range(len(images)):
        members.setdefault(root(i), []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])
