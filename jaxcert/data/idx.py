"""The IDX file format of MNIST and Fashion-MNIST (raw or gzip-compressed).

Layout: two zero bytes, a type code, the number of dimensions ``k``, ``k`` big-endian uint32 sizes,
then the data in C order (big-endian for multi-byte types).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

#: IDX type code -> numpy dtype (big-endian).
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder(">") if dtype.itemsize > 1 else dtype: code for code, dtype in IDX_TYPES.items()}

#: Standard file stems: split -> (images, labels).
IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _open(path: Path):
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an IDX file into an array of its stored shape and dtype."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{source}: not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        raise ValueError(f"{source}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{source}: IDX payload has {len(data) - header} bytes, shape {shape} needs {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip detected from its content, not its name)."""
    path = Path(path)
    with _open(path) as f:
        return parse_idx(f.read(), str(path))


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file; gzip when ``compress`` (default: the name ends in ``.gz``)."""
    path = Path(path)
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if dtype not in _CODES:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, _CODES[dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(dtype).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    with gzip.open(path, "wb") if compress else open(path, "wb") as f:
        f.write(payload)
    return path


def find_idx_pair(directory: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) files of ``split`` in ``directory``, raw or ``.gz``, standard names
    (``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte``); ``None`` when missing."""
    found = []
    for stem in IDX_STEMS[split]:
        names = [stem, stem.replace("-idx", ".idx")]
        hits = [directory / (n + ext) for n in names for ext in (".gz", "") if (directory / (n + ext)).is_file()]
        if not hits:
            return None
        found.append(hits[0])
    return found[0], found[1]


def load_idx_images(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(x, y)`` with x uint8 (N, H, W, 1) from the idx files of ``split``, or ``None`` if absent."""
    pair = find_idx_pair(directory, split)
    if pair is None:
        return None
    images, labels = read_idx(pair[0]), read_idx(pair[1])
    if images.ndim != 3:
        raise ValueError(f"{pair[0]}: expected images of shape (N, H, W), got {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"{pair[1]}: {labels.shape[0] if labels.ndim else 0} labels for {images.shape[0]} images")
    return images[..., None], labels
