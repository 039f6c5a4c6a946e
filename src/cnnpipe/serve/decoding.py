"""Decoding uploads under a memory budget: each image by the pipeline's own preprocessing
(preprocess.load, which checks pixels and decoded bytes before decoding), small ones on the event
loop, larger ones in a worker thread with at most `decodes` at once per worker; and work dropped
when the request is gone (the client disconnected, or the timeout answered 504)."""

from __future__ import annotations

import ctypes
import ctypes.util
import typing as t
from dataclasses import dataclass

import anyio
import anyio.to_thread
import numpy as np
from starlette.datastructures import UploadFile

from cnnpipe.core import preprocess

if t.TYPE_CHECKING:
    from starlette.types import Message, Receive

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD = 1 << 20


def return_freed_images_to_the_system() -> None:
    """Make glibc map every allocation over 1 MiB on its own, so that a decoded image's memory
    goes back to the system when it is freed. By default glibc raises that threshold to the size
    of the largest block freed so far (up to 32 MiB), so after one large image the next ones come
    from its heap, which does not shrink: a worker kept 53 MB after 8 concurrent 16-bit
    5000x5000 images without this, 3 MB with it (tests/test_server.py)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc: its allocator has its own policy
        pass


# an upload and its decoded pixels up to this size are decoded on the event loop (a 64x64 RGB
# image takes about 0.1 ms: less than a thread hand-off); larger ones in a worker thread
INLINE_BYTES = 64 * 2**10


class Image(t.NamedTuple):
    """One decoded upload: what the batched model call receives."""

    pixels: np.ndarray  # uint8 (channels, size, size), as preprocess.load made it
    top_k: int | None


@dataclass(frozen=True)
class Decoder:
    """Decodes uploads for one model input under the serving limits."""

    image_size: int
    channels: int
    max_pixels: int
    max_image_bytes: int
    limiter: anyio.CapacityLimiter  # decodes at once in this worker

    def _load(self, source: t.Any) -> np.ndarray:
        return preprocess.load(
            source, self.image_size, self.channels, self.max_pixels, self.max_image_bytes
        )

    def small(self, source: bytes | t.IO[bytes]) -> bool:
        """Whether decoding this takes less time than handing it to a thread."""
        if not isinstance(source, bytes) or len(source) > INLINE_BYTES:
            return False
        found = preprocess.header(source)
        return found is not None and preprocess.decoded_bytes(*found) <= INLINE_BYTES

    async def decode(self, source: bytes | t.IO[bytes], inline: bool) -> np.ndarray:
        """The model input of one upload: decoded here if `inline` (small), else in a thread."""
        if inline:  # on the event loop, one at a time
            return self._load(source)
        return await anyio.to_thread.run_sync(self._load, source, limiter=self.limiter)


def sources(part: str | bytes | UploadFile) -> list[bytes | t.IO[bytes]]:
    """What a part may hold, most likely first. A part sent without a filename reaches here as
    text, decoded by Starlette as UTF-8 or, if its bytes are not UTF-8 (an image's never are),
    as Latin-1: both ways back are tried."""
    if isinstance(part, UploadFile):
        if not part.size:
            return [b""]  # preprocess says the file is empty
        part.file.seek(0)
        if part.size <= INLINE_BYTES:  # in memory already (spooled up to 1 MiB)
            return [part.file.read()]
        return [part.file]
    if isinstance(part, str):
        encoded = [part.encode(codec) for codec in ("latin-1", "utf-8") if _encodes(part, codec)]
        return list(dict.fromkeys(encoded))
    return [part]


def _encodes(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


async def until_disconnect(work: t.Awaitable[list[Image]], receive: Receive) -> list | None:
    """The result of `work`, or None as soon as the client disconnects (work is cancelled)."""
    outcome: dict[str, t.Any] = {}

    async def run(scope: anyio.CancelScope) -> None:
        try:
            outcome["result"] = await work
        except Exception as exc:  # raised below, not as an exception group
            outcome["error"] = exc
        scope.cancel()

    async def watch(scope: anyio.CancelScope) -> None:
        message: Message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(run, group.cancel_scope)
        group.start_soon(watch, group.cancel_scope)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")
