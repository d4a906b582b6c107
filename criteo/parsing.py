"""Parsing: a block of whole TSV lines -> label, dense and hashed categorical columns, and the
line-by-line scan that names the first bad line of a block that fails.

parse_block runs no Python code per line: pyarrow's C++ CSV reader splits the fields (int64
for label and dense, binary for the hex columns), the hex columns are decoded in numpy. Any
check that fails raises BadBlock; first_bad_line then says which line and why.
"""

import re
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (imported before the workers fork, not in each)
import pyarrow.csv as pacsv

import data_format as fmt

HASH_MOD = 40_000_000  # categorical = int(hex, 16) % HASH_MOD (the MLPerf reference's)
INT32_MAX = np.iinfo(np.int32).max
NUM_FIELDS = 1 + fmt.NUM_DENSE + fmt.NUM_CATEGORICAL
FIELD_NAMES = (["label"] + [f"I{i}" for i in range(1, fmt.NUM_DENSE + 1)]
               + [f"C{i}" for i in range(1, fmt.NUM_CATEGORICAL + 1)])
UTF8_BOM = b"\xef\xbb\xbf"

_NOT_HEX = 255
_NIBBLE_OF_BYTE = np.full(256, _NOT_HEX, np.uint8)  # ASCII byte -> its hex digit's value
for _value, _digit in enumerate(b"0123456789abcdef"):
    _NIBBLE_OF_BYTE[_digit] = _value
for _value, _digit in enumerate(b"ABCDEF"):
    _NIBBLE_OF_BYTE[_digit] = 10 + _value
_DIGIT_POSITIONS = np.arange(8)  # a hex value's 8 digits
_EIGHT_ZEROS = np.frombuffer(b"00000000", np.uint8)  # the digits of a column without data

_COLUMN_TYPES = {name: (pa.int64() if i <= fmt.NUM_DENSE else pa.binary())
                 for i, name in enumerate(FIELD_NAMES)}
_PARSE_OPTIONS = pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                                    newlines_in_values=False, ignore_empty_lines=False)
_CONVERT_OPTIONS = pacsv.ConvertOptions(column_types=_COLUMN_TYPES, null_values=[""],
                                        strings_can_be_null=False,
                                        quoted_strings_can_be_null=False, check_utf8=False)
_INTEGER = re.compile(rb"-?[0-9]+")
_HEX_VALUE = re.compile(rb"[0-9A-Fa-f]{1,8}")


class BadBlock(Exception):
    """A block failed a vectorised check; first_bad_line names the line."""


class ParsedBlock(NamedTuple):
    """The columns of a block of n lines."""
    label: np.ndarray   # int64 [n], 0 or 1
    dense: list         # 13 int64 [n], missing -> 0, at most INT32_MAX
    hashed: list        # 26 uint32 [n], int(hex, 16) % hash_mod, missing -> 0


class BadLine(NamedTuple):
    """The first bad line of a block."""
    index: int    # its line index in the block
    offset: int   # the byte offset of its start in the block
    problem: str  # what is wrong, naming the field and the value


def _hex_digits_to_values(digits, hash_mod):
    """uint8 [k, 8] ASCII hex digits -> uint32 [k] = int(digits, 16) % hash_mod."""
    nibbles = np.take(_NIBBLE_OF_BYTE, digits)
    if nibbles.size and nibbles.max() == _NOT_HEX:
        raise BadBlock
    packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    values = packed.view(">u4").reshape(len(digits)).astype(np.uint32)
    np.remainder(values, np.uint32(hash_mod), out=values)
    return values


def hash_hex_column(column, hash_mod):
    """pyarrow binary array of 0-8 hex digits per value -> uint32 [n] hashed values
    int(value, 16) % hash_mod, an empty value -> 0. Raises BadBlock for anything else."""
    n = len(column)
    buffers = column.buffers()
    offsets = np.frombuffer(buffers[1], np.int32, count=n + 1, offset=4 * column.offset)
    data = (np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None and buffers[2].size
            else _EIGHT_ZEROS)
    lengths = np.diff(offsets)
    if n == 0:
        return np.zeros(0, np.uint32)
    full = lengths == 8
    if np.count_nonzero(full) * 8 == offsets[-1] - offsets[0]:
        # Every value is 8 digits or empty (Criteo's files): the values' bytes are one
        # contiguous [k, 8] array, no gather needed.
        values = _hex_digits_to_values(data[offsets[0]:offsets[-1]].reshape(-1, 8), hash_mod)
        if len(values) == n:
            return values
        out = np.zeros(n, np.uint32)  # missing -> 0
        out[full] = values
        return out
    if lengths.max() > 8:
        raise BadBlock
    # Values of 1-7 digits: gather each value's last 8 bytes, left-pad with "0".
    index = (offsets[1:].astype(np.int64) - 8)[:, None] + _DIGIT_POSITIONS
    np.clip(index, 0, len(data) - 1, out=index)
    digits = data[index]
    digits[_DIGIT_POSITIONS < (8 - lengths)[:, None]] = ord("0")
    return _hex_digits_to_values(digits, hash_mod)


def _read_columns(block):
    """bytes of whole TSV lines -> the 40 pyarrow arrays (raises BadBlock where pyarrow
    refuses the block)."""
    try:
        table = pacsv.read_csv(
            pa.py_buffer(block),
            read_options=pacsv.ReadOptions(column_names=FIELD_NAMES, use_threads=False,
                                           block_size=len(block) + 1024),
            parse_options=_PARSE_OPTIONS, convert_options=_CONVERT_OPTIONS)
    except pa.ArrowInvalid:
        raise BadBlock from None
    return [table.column(i).combine_chunks() if table.column(i).num_chunks != 1
            else table.column(i).chunk(0) for i in range(NUM_FIELDS)]


def parse_block(block, hash_mod):
    """bytes of whole TSV lines (n lines, the last one's "\\n" optional) -> ParsedBlock.
    Raises BadBlock if any line is bad (first_bad_line says which)."""
    # pyarrow's int64 parser also takes "0x1f", and skips a UTF-8 byte-order mark at the start
    # of every block; no valid line holds an x, a \r or a BOM.
    if (block.find(b"\r") >= 0 or block.find(b"x") >= 0 or block.find(b"X") >= 0
            or block.find(UTF8_BOM) >= 0):
        raise BadBlock
    columns = _read_columns(block)
    label_column = columns[0]
    if label_column.null_count:
        raise BadBlock
    label = label_column.to_numpy()
    if len(label) and (label.min() < 0 or label.max() > 1):
        raise BadBlock
    dense = []
    for column in columns[1:1 + fmt.NUM_DENSE]:
        values = (column.fill_null(0) if column.null_count else column).to_numpy()
        if len(values) and values.max() > INT32_MAX:
            raise BadBlock
        dense.append(values)
    hashed = [hash_hex_column(column, hash_mod) for column in columns[1 + fmt.NUM_DENSE:]]
    return ParsedBlock(label, dense, hashed)


def _quoted(value):
    """bytes -> its repr as text, cut to 40 characters, for a message."""
    text = value.decode("latin-1")
    return repr(text if len(text) <= 40 else text[:40] + "...")


def describe_field(j):
    """Field j (0-based) of a line -> "field J+1 (NAME)"."""
    return f"field {j + 1} ({FIELD_NAMES[j]})"


def _dense_problem(j, field):
    """What is wrong with dense field j's text (bytes), or None."""
    value = field.strip(b" ")
    if not value:
        return None
    if not _INTEGER.fullmatch(value):
        return f"{describe_field(j)} {_quoted(field)} is not an integer"
    if int(value) > INT32_MAX:
        return f"{describe_field(j)} {int(value)} is too large (does not fit int32)"
    if int(value) < -(1 << 63):
        return f"{describe_field(j)} {int(value)} is too small (does not fit int64)"
    return None


def _line_problem(line):
    """The first thing wrong with one line (bytes, no line end), or None."""
    if b"\r" in line:
        return "contains a carriage return (\\r); Criteo's files end lines with \\n only"
    if UTF8_BOM in line:
        return "contains a UTF-8 byte-order mark (bytes EF BB BF); Criteo's files have none"
    fields = line.split(b"\t")
    if len(fields) != NUM_FIELDS:
        return f"has {len(fields)} tab-separated fields, expected {NUM_FIELDS}"
    label = fields[0].strip(b" ")
    if label not in (b"0", b"1"):
        return ("label is empty (missing)" if not label
                else f"label {_quoted(fields[0])} is not 0 or 1")
    for j in range(1, 1 + fmt.NUM_DENSE):
        problem = _dense_problem(j, fields[j])
        if problem is not None:
            return problem
    for j in range(1 + fmt.NUM_DENSE, NUM_FIELDS):
        if fields[j] and not _HEX_VALUE.fullmatch(fields[j]):
            return (f"{describe_field(j)} {_quoted(fields[j])} is not a hexadecimal "
                    f"number of 1-8 digits")
    return None


def first_bad_line(block):
    """bytes of whole lines -> BadLine of the first bad line, or None."""
    offset = 0
    lines = block.split(b"\n")
    if block.endswith(b"\n"):
        lines.pop()
    for index, line in enumerate(lines):
        problem = _line_problem(line)
        if problem is not None:
            return BadLine(index, offset, problem)
        offset += len(line) + 1
    return None
