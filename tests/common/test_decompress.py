"""common.decompress and common.zstd: every codec a tar upload may use, decompressed in bounded
pieces; truncated and corrupt streams are errors, never a quiet short read."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random

import pytest
import zstandard

from common.decompress import CHUNK, DecompressError, PlainReader
from common.zstd import FrameWalker, ZstdError, ZstdReader

DATA = os.urandom(100_000) + b"compressible " * 200_000
CODECS = {
    "plain": lambda b: b,
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


def read_all(reader: PlainReader | ZstdReader, n: int = CHUNK) -> bytes:
    out = []
    while piece := reader.read(n):
        assert len(piece) <= n
        out.append(piece)
    return b"".join(out)


@pytest.mark.parametrize("codec", list(CODECS))
def test_every_codec_reads_back(codec: str) -> None:
    reader = PlainReader(io.BytesIO(CODECS[codec](DATA)))
    assert reader.kind == ("" if codec == "plain" else codec)
    assert read_all(reader, 65536) == DATA


@pytest.mark.parametrize("codec", ["gzip", "bzip2", "xz", "zstd"])
def test_truncated_streams_are_errors(codec: str) -> None:
    packed = CODECS[codec](DATA)
    with pytest.raises(DecompressError, match=r"truncated|unexpected EOF|invalid"):
        read_all(PlainReader(io.BytesIO(packed[: len(packed) * 2 // 3])))


def test_a_zstd_bomb_comes_out_in_bounded_pieces() -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(256 << 20))
    assert len(bomb) < 64 << 10
    reader = ZstdReader(io.BytesIO(bomb))
    total = 0
    while piece := reader.read(1 << 20):
        assert len(piece) <= 1 << 20
        total += len(piece)
    assert total == 256 << 20


def frames(rng: random.Random) -> bytes:
    """A few zstd frames of assorted settings, with a skippable frame among them."""
    out = b""
    for i in range(rng.randrange(1, 4)):
        payload = rng.randbytes(rng.randrange(0, 3000)) + bytes(rng.randrange(0, 200_000))
        cctx = zstandard.ZstdCompressor(level=rng.choice([1, 3, 9]), write_checksum=rng.random() < 0.5,
                                        write_content_size=rng.random() < 0.5)
        if rng.random() < 0.5:
            out += cctx.compress(payload)
        else:
            obj = cctx.compressobj()
            out += obj.compress(payload) + obj.flush()
        if i == 0:
            out += b"\x5a\x2a\x4d\x18" + (3).to_bytes(4, "little") + b"skp"
    return out


def test_the_frame_walker_knows_a_whole_stream_from_a_cut_one() -> None:
    rng = random.Random(11)
    for _ in range(40):
        stream = frames(rng)
        walker = FrameWalker()
        for i in range(0, len(stream), 777):
            walker.feed(stream[i:i + 777])
        assert walker.complete()
        cut = FrameWalker()
        cut.feed(stream[: rng.randrange(1, len(stream))])
        assert not cut.complete()
    with pytest.raises(ZstdError, match="truncated"):
        read_all(ZstdReader(io.BytesIO(b"")))
