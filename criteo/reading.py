"""Reading: the day files found, cut into chunks that start at line starts, and a chunk read
as blocks of whole lines (a .gz file inflated on the way); a bad block's first bad line named
by its line number in the file.
"""

import gzip
import os
import zlib
from typing import NamedTuple

from criteo import parsing
from data_format import InputError


class InputChunk(NamedTuple):
    """Bytes [index * chunk_bytes, (index + 1) * chunk_bytes) of a plain day file, each end
    moved to the next line start; a .gz file is one chunk (index 0)."""
    day: int
    path: str
    gzipped: bool
    index: int
    chunk_bytes: int

    def input_bytes(self, file_size):
        """About how many bytes of the file this chunk reads (exactly, before the moves to
        line starts)."""
        if self.gzipped:
            return file_size
        return min(self.chunk_bytes, file_size - self.index * self.chunk_bytes)


class Block(NamedTuple):
    """Whole lines of a chunk."""
    data: bytes
    offset: int  # of data's first byte in the file (a .gz file: in the decompressed stream)


def find_inputs(input_dir, days):
    """day -> path of day_K or day_K.gz in input_dir (InputError if neither, both, or not a
    regular file)."""
    if not os.path.isdir(input_dir):
        raise InputError(f"{input_dir}: not a directory (expected the directory holding "
                         f"day_0 .. day_23)")
    paths = {}
    for day in days:
        candidates = [os.path.join(input_dir, f"day_{day}{ext}") for ext in ("", ".gz")]
        for path in candidates:
            if os.path.exists(path) and not os.path.isfile(path):
                kind = "a directory" if os.path.isdir(path) else "not a regular file"
                raise InputError(f"{path}: is {kind}, expected the day's TSV file (plain or "
                                 f".gz)")
        found = [p for p in candidates if os.path.isfile(p)]
        if not found:
            raise InputError(f"{input_dir}: no day_{day} or day_{day}.gz")
        if len(found) > 1:
            raise InputError(f"{input_dir}: both day_{day} and day_{day}.gz exist; keep one")
        paths[day] = found[0]
    return paths


def input_chunks(day, path, chunk_bytes):
    """-> the InputChunks of a day's file (at least one, also for an empty file)."""
    if path.endswith(".gz"):
        return [InputChunk(day, path, True, 0, 0)]
    size = os.path.getsize(path)
    return [InputChunk(day, path, False, index, chunk_bytes)
            for index in range(max(1, -(-size // chunk_bytes)))]


def _line_start(f, pos, size):
    """The first line start at or after pos of the open file f of `size` bytes (pos itself
    if the byte before it is '\\n')."""
    if pos <= 0:
        return 0
    if pos >= size:
        return size
    f.seek(pos - 1)
    start = pos - 1
    while True:
        data = f.read(1 << 16)
        if not data:
            return size
        i = data.find(b"\n")
        if i >= 0:
            return start + i + 1
        start += len(data)


def _read_gzip(f, want, path, position):
    """Up to `want` bytes of the gzip.GzipFile f (fewer only at the end of the stream), read
    in pieces so that bad or truncated data is reported at the decompressed byte reached
    (position: that of the first byte asked for)."""
    pieces, got = [], 0
    while got < want:
        try:
            piece = f.read1(want - got)
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise InputError(f"{path}: bad gzip data after {position + got} decompressed "
                             f"bytes: {err}") from None
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


class _ChunkReader:
    """A chunk's bytes, read `want` at a time: read() -> bytes (b"" at the chunk's end)."""

    def __init__(self, chunk):
        self.chunk = chunk
        self.file = open(chunk.path, "rb")  # the bytes on disk, for the progress counter
        if chunk.gzipped:
            self._stream = gzip.GzipFile(fileobj=self.file, mode="rb")
            self.start, self.end = 0, None
        else:
            self._stream = self.file
            size = os.fstat(self.file.fileno()).st_size
            self.start = _line_start(self.file, chunk.index * chunk.chunk_bytes, size)
            self.end = _line_start(self.file, (chunk.index + 1) * chunk.chunk_bytes, size)
            self.file.seek(self.start)
        self._left = None if self.end is None else self.end - self.start

    def read(self, want, position):
        """Up to want bytes (fewer only at the chunk's end); position: the offset of the
        first one, for messages."""
        if self._left is None:
            return _read_gzip(self._stream, want, self.chunk.path, position)
        want = min(want, self._left)
        data = self._stream.read(want) if want > 0 else b""
        if want > 0 and not data:
            raise InputError(f"{self.chunk.path}: ended before byte {self.end} "
                             f"(file changed while reading?)")
        self._left -= len(data)
        return data

    def at_end(self, data):
        """Whether the chunk ends with this read's data."""
        return not data or self._left == 0

    def close(self):
        self._stream.close()
        self.file.close()


def chunk_blocks(chunk, block_bytes, bytes_read=None):
    """Yields the Blocks of an InputChunk, about block_bytes each, and adds the input bytes
    consumed (on disk) to bytes_read (a shared multiprocessing.Value, or None)."""
    reader = _ChunkReader(chunk)
    try:
        carry, offset, consumed = b"", reader.start, reader.file.tell()
        while True:
            data = reader.read(block_bytes, offset + len(carry))
            at_end = reader.at_end(data)
            if bytes_read is not None:
                now = reader.file.tell()
                with bytes_read.get_lock():
                    bytes_read.value += now - consumed
                consumed = now
            data = carry + data if carry else data
            if at_end:
                if data:
                    yield Block(data, offset)
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            yield Block(data[:cut] if cut < len(data) else data, offset)
            offset += cut
            carry = data[cut:]
    finally:
        reader.close()


def lines_in_block(data):
    """The number of lines in bytes of whole lines (the last "\\n" optional)."""
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def _count_newlines(path, end):
    """The "\\n" bytes in the first `end` bytes of the file."""
    count = 0
    with open(path, "rb") as f:
        while end > 0:
            data = f.read(min(end, 16 << 20))
            if not data:
                break
            count += data.count(b"\n")
            end -= len(data)
    return count


def bad_line_error(chunk, block, lines_before):
    """-> InputError naming the file, the line (and byte offset) and the problem of the first
    bad line of a Block of the chunk that failed to parse; lines_before lines of the chunk
    precede the block."""
    found = parsing.first_bad_line(block.data)
    if found is None:  # the vectorised checks and the line scan disagree: say what we know
        return InputError(f"{chunk.path}: the block of lines starting at byte {block.offset} "
                          f"does not parse (pyarrow rejects it), but no single bad line was "
                          f"found in it")
    offset = block.offset + found.offset
    if chunk.gzipped:
        where = (f"line {lines_before + found.index + 1} (byte {offset} of the decompressed "
                 f"stream)")
    else:
        where = f"line {_count_newlines(chunk.path, offset) + 1} (byte {offset})"
    return InputError(f"{chunk.path}: {where}: {found.problem}")
