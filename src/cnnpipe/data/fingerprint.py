"""What the process stage needs to know of each raw image before it converts any: whether it
carries colour, and perceptual hashes that find its near-duplicates (the same picture resized,
re-encoded or lightly edited), so that no picture is trained on and tested on at once.

Taken once, when the generate stage has the decoded image in hand, from a small square copy made
by the pipeline's own conversion (cnnpipe.core.preprocess: transparency on white, 16-bit and
float images scaled): a file of any mode and size is fingerprinted the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

from cnnpipe.core import preprocess

THUMBNAIL = 64  # px: what the fingerprint is taken from
# A pixel is coloured when its channels differ by more than this (of 255): above the chroma noise
# of a grey picture saved as a colour JPEG, below any visible tint.
CHROMA = 24
COLOURED_SHARE = 0.02  # an image carries colour when this share of its pixels is coloured


@dataclass(frozen=True)
class Fingerprint:
    colour: bool
    phash: str  # 64-bit perceptual (DCT) hash, hex
    dhash: str  # 64-bit difference hash, hex


def fingerprint(image: Image.Image) -> Fingerprint:
    """An image's fingerprint (any PIL mode, as preprocess decodes it)."""
    pixels = preprocess.to_array(image, THUMBNAIL, 3).transpose(1, 2, 0)
    chroma = pixels.max(axis=2).astype(np.int16) - pixels.min(axis=2)
    colour = bool(np.mean(chroma > CHROMA) >= COLOURED_SHARE)
    thumbnail = Image.fromarray(pixels)
    return Fingerprint(colour, str(imagehash.phash(thumbnail)), str(imagehash.dhash(thumbnail)))
