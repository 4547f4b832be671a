"""Read many Darknet label files at once: one read per file, then the numbers parsed and the label rules checked with
numpy over the whole set, several times faster than the per-line checker (bench/anchors.py times genanchors.py).

The vectorised path takes the usual form of a label file: ASCII digits, one sign and one decimal point per number,
spaces, tabs and line ends, numbers of at most 16 characters without an exponent. A file holding anything else (an
exponent, `nan`, a stray character or control byte) or a line or box that breaks a rule is handed whole to
utils/data/dataset.parse_labels, the per-line checker: it names the line and what is wrong, or accepts the file (an
exponent is a number). So the boxes and the problems are exactly parse_labels', file by file.

A number is parsed as its digits, an integer m below 2^53, divided by 10^q for its q decimals: m and 10^q are exact
doubles, so the quotient is the correctly rounded value of the decimal, the same double Python's float() gives.
Eight characters of a number are handled at once as one 64-bit word (SWAR: the eight digits of a word become one
integer in three multiply-and-shift steps), a group of files at a time so the temporaries stay in the CPU cache.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from utils.data.dataset import COORD_TOLERANCE, parse_labels

FIELDS = 5                      # class cx cy w h
MAX_TOKEN = 16                  # longer numbers (or other tokens) go to the per-line checker
GROUP_BYTES = 1 << 18           # label text parsed per numpy step: the temporaries stay in the CPU cache
_BOM = b'\xef\xbb\xbf'
_PAD = b'\n' * MAX_TOKEN        # before the first file: every token has MAX_TOKEN bytes before its end

# Byte classes. Python's str.split() also splits on \v \f \x1c-\x1f and str.splitlines() breaks lines at \v \f
# \x1c-\x1e: those bytes (and every other control byte) send their file to the per-line checker.
_TOKEN, _SPACE, _NEWLINE, _CONTROL = 0, 1, 2, 3
_BYTE_KIND = np.full(256, _TOKEN, np.uint8)
_BYTE_KIND[:32] = _CONTROL
_BYTE_KIND[[ord('\t'), ord(' ')]] = _SPACE
_BYTE_KIND[[ord('\n'), ord('\r')]] = _NEWLINE


def _repeat_byte(value: int) -> np.uint64:
    return np.uint64(value * 0x0101010101010101)


_ZERO_CHARS = _repeat_byte(ord('0'))
_DOT_CHARS = _repeat_byte(ord('.'))
_LOW7, _HIGH1, _ABOVE_NINE = _repeat_byte(0x7F), _repeat_byte(0x80), _repeat_byte(0x7F - ord('9'))
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_POW10_INT = 10 ** np.arange(MAX_TOKEN + 2, dtype=np.uint64)
_POW10 = 10.0 ** np.arange(MAX_TOKEN + 2)   # exact doubles up to 10^22
_EXACT_LIMIT = 2 ** 53


def read_label_files(paths: list, classes: int | None) -> tuple[np.ndarray, np.ndarray, list]:
    """Read and check label files, each with one read. Returns (float32 (n, 5) labels of the usable files in file
    order, int64 boxes per file (0 for one left out), ['file:line: what is wrong' for each file left out])."""
    texts, unreadable = [], {}
    for index, path in enumerate(paths):
        try:
            with open(path, 'rb') as f:
                texts.append(f.read())
        except OSError as error:
            texts.append(b'')
            unreadable[index] = f' label file cannot be read ({error.strerror})'
    labels, counts, problems = parse_label_texts(texts, classes)
    problems = sorted(problems + list(unreadable.items()))
    return labels, counts, [f'{paths[index]}:{problem}' for index, problem in problems]


def parse_label_texts(texts: list, classes: int | None) -> tuple[np.ndarray, np.ndarray, list]:
    """Check the raw bytes of many label files. Returns (float32 (n, 5) labels of the usable files, concatenated in
    file order; int64 (files,) boxes per file, 0 for a file left out; [(file index, 'line N: what is wrong' or
    'label file is not UTF-8 text')] for the files left out).

    The same as parse_labels(text, classes) on each file decoded as UTF-8 (a leading BOM dropped)."""
    texts = [t[len(_BOM):] if t.startswith(_BOM) else t for t in texts]
    groups = _groups(texts)
    # numpy's array operations release the GIL, so the groups parse side by side, one thread per core
    with ThreadPoolExecutor(max(1, min(len(groups), os.cpu_count() or 1))) as pool:
        parts = list(pool.map(lambda group: _parse_group(texts[group[0]:group[1]], classes), groups))
    labels, counts, suspect = (np.concatenate(part) for part in zip(*parts)) if parts else (
        np.zeros((0, FIELDS), np.float32), np.zeros(0, np.int64), np.zeros(0, bool))
    # the suspect files, checked line by line, go back in their place
    pieces, problems, done = [], [], 0
    cuts = np.cumsum(counts)   # a suspect file counts 0: cuts[i] clean rows come before file i
    for index in np.flatnonzero(suspect):
        pieces.append(labels[done:cuts[index]])
        done = cuts[index]
        file_labels, problem = check_label_file(texts[index], classes)
        if problem:
            problems.append((int(index), problem))
        else:
            pieces.append(file_labels)
            counts[index] = len(file_labels)
    if pieces:
        labels = np.concatenate(pieces + [labels[done:]])
    return labels, counts, problems


def _groups(texts: list) -> list:
    """(begin, end) of consecutive files of about GROUP_BYTES together."""
    groups, begin, size = [], 0, 0
    for end, text in enumerate(texts, 1):
        size += len(text) + 1
        if size >= GROUP_BYTES or end == len(texts):
            groups.append((begin, end))
            begin, size = end, 0
    return groups


def _parse_group(texts: list, classes: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float32 labels of the files that need no per-line check, int64 boxes per file (0 for the others), bool
    per file whether it needs the per-line check)."""
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    file_starts = len(_PAD) + np.cumsum(lengths + 1) - (lengths + 1)
    buffer = _PAD + b'\n'.join(texts) + b'\n'   # every file ends a line
    rows, row_starts, suspect = _parse_rows(buffer, file_starts)
    file_of_row = np.searchsorted(file_starts, row_starts, 'right') - 1
    suspect[file_of_row[~_rows_follow_rules(rows, classes)]] = True
    counts = np.bincount(file_of_row, minlength=len(texts)).astype(np.int64)
    labels = rows[~suspect[file_of_row]]
    labels[:, 1:5] = labels[:, 1:5].clip(0, 1)
    counts[suspect] = 0
    return labels.astype(np.float32), counts, suspect


def check_label_file(raw: bytes, classes: int | None) -> tuple[np.ndarray, str | None]:
    """The per-line check of one file's bytes (BOM dropped): (labels, None) or (empty, problem), the problem to
    follow `file:` (parse_labels' 'N: what is wrong', or ' label file is not UTF-8 text' as the split check says)."""
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError:
        return np.zeros((0, FIELDS), np.float32), ' label file is not UTF-8 text'
    return parse_labels(text, classes)


def _parse_rows(buffer: bytes, file_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lines of five numbers in `buffer`, as float64 (rows, 5); the offset of each row's first byte; and per file
    whether something in it needs the per-line checker (a control byte, a token that is not a plain number, a
    non-empty line without five tokens)."""
    data = np.frombuffer(buffer, np.uint8)
    kind = _BYTE_KIND[data]
    suspect = np.zeros(len(file_starts), bool)

    def mark(offsets):
        suspect[np.searchsorted(file_starts, offsets, 'right') - 1] = True

    if kind.max() == _CONTROL:
        mark(np.flatnonzero(kind == _CONTROL))
    gaps = np.flatnonzero(kind != _TOKEN)               # the buffer starts and ends with one of these
    token_follows = np.flatnonzero(np.diff(gaps) > 1)
    starts, ends = gaps[token_follows] + 1, gaps[token_follows + 1]
    words = np.ndarray((len(buffer) - 7,), np.dtype('<u8'), buffer=buffer, strides=(1,))
    values, valid = _parse_numbers(words, starts, ends)
    mark(starts[~valid])

    newlines = gaps[kind[gaps] == _NEWLINE]
    first_token = np.searchsorted(starts, newlines)                 # of the line after each newline
    per_line = np.diff(first_token, append=len(starts))
    full = per_line == FIELDS
    broken = (per_line != 0) & ~full
    if broken.any():
        mark(newlines[broken] + 1)   # the first byte of the line
        row_tokens = first_token[full]
        rows = values[row_tokens[:, None] + np.arange(FIELDS)]
    else:
        row_tokens = np.arange(0, len(starts), FIELDS)
        rows = values.reshape(-1, FIELDS)
    return rows, starts[row_tokens], suspect


def _rows_follow_rules(rows: np.ndarray, classes: int | None) -> np.ndarray:
    """(rows,) bool: whether each row passes every rule of parse_labels (a file's all-outside rule included: a box
    outside the image always breaks the centre or the size rule)."""
    cls, centres, sizes = rows[:, 0], rows[:, 1:3], rows[:, 3:5]
    ok = cls == np.round(cls)
    if classes is not None:
        ok &= (cls >= 0) & (cls < classes)
    ok &= ((sizes > 0) & (sizes <= 1 + COORD_TOLERANCE)).all(1)
    ok &= ((centres >= -COORD_TOLERANCE) & (centres <= 1 + COORD_TOLERANCE)).all(1)
    return ok


def _parse_numbers(words: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 value of each token [start, end) of the buffer whose every 8-byte word `words` holds (one per byte
    offset), and whether it is a plain decimal number float() reads the same way ([+-]digits[.digits], at most
    MAX_TOKEN characters, below 2^53 without its point)."""
    # A token is read right-aligned in a 16-byte frame, two little-endian words: `low` (frame bytes 0-7, only for
    # tokens longer than 8) and `high` (bytes 8-15, the token's last 8 bytes). Frame bytes before it read as '0'.
    lengths = ends - starts
    first_byte = 16 - np.minimum(lengths, 16)             # the token's first byte in the frame
    long = lengths > 8
    any_long = bool(long.any())
    high_keep = _ALL << (np.maximum(first_byte - 8, 0) * 8).astype(np.uint64)
    high = (words[ends - 8] & high_keep) | (_ZERO_CHARS & ~high_keep)
    shift = (first_byte % 8 * 8).astype(np.uint64)        # of the first byte in its word
    if any_long:
        low_keep = _ALL << shift
        low = np.where(long, (words[ends - 16] & low_keep) | (_ZERO_CHARS & ~low_keep), _ZERO_CHARS)
        first = (np.where(long, low, high) >> shift) & np.uint64(0xFF)
    else:
        first = (high >> shift) & np.uint64(0xFF)
    # a leading sign becomes a '0'
    negative = first == ord('-')
    signed = negative | (first == ord('+'))
    fix = ((first ^ np.uint64(ord('0'))) * signed) << shift
    high_digits, high_dot, high_ok = _word_digits(high ^ (fix * ~long if any_long else fix))
    if any_long:
        low_digits, low_dot, low_ok = _word_digits(low ^ (fix * long))
    else:
        low_digits, low_dot, low_ok = np.uint64(0), np.uint64(0), True
    # one decimal point at most, with `decimals` digits after it
    dot_count = (low_dot != 0).astype(np.int64) + (high_dot != 0)
    dot_byte = np.where(high_dot != 0, 8 + _byte_index(high_dot), _byte_index(low_dot))
    decimals = np.where(dot_count == 1, 15 - dot_byte, 0)
    whole = low_digits * _POW10_INT[8] + high_digits       # the point read as a 0 digit
    unit = _POW10_INT[decimals]
    after_point = whole % unit                               # 0 without a point (unit 1)
    mantissa = np.where(dot_count == 1, (whole - after_point) // np.uint64(10) + after_point, whole)
    digits = lengths - signed - dot_count
    valid = (high_ok & low_ok & (dot_count <= 1) & (digits >= 1) & (lengths <= MAX_TOKEN)
             & (mantissa < _EXACT_LIMIT))
    values = mantissa.astype(np.float64) / _POW10[decimals]
    values[negative] *= -1
    return values, valid


def _word_digits(word):
    """(the eight characters of each word as an integer with '.' read as '0'; 0x80 in the byte of each '.';
    whether every byte is a digit, but for one '.' at most)."""
    differs = word ^ _DOT_CHARS
    dot = ~(((differs & _LOW7) + _LOW7) | differs | _LOW7)        # exact: 0x80 where a byte equals '.'
    word = word ^ ((dot >> np.uint64(7)) * np.uint64(ord('.') ^ ord('0')))
    # a byte outside '0'..'9' sets its top bit in one of the two sums (the lowest such byte at least)
    ok = ((((word + _ABOVE_NINE) | (word - _ZERO_CHARS)) & _HIGH1) == 0) & ((dot & (dot - np.uint64(1))) == 0)
    value = word - _ZERO_CHARS
    value = (value * np.uint64(10) + (value >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    value = (value * np.uint64(100) + (value >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    value = (value * np.uint64(10000) + (value >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    return value, dot, ok


def _byte_index(marks):
    """Index (0..7) of the lowest byte with its top bit set, for words with one such byte."""
    return (np.frexp(marks.astype(np.float64))[1] - 8) // 8
