"""A dependency-free TensorBoard event-file writer (and reader) for scalar metrics.

TensorBoard reads ``events.out.tfevents.*`` files: a sequence of TFRecords, each

    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

(little endian; CRC-32C (Castagnoli), masked as ``((crc >> 15) | (crc << 17)) + 0xa282ead8``), whose data is
a serialised protobuf ``Event``. Only the fields scalars need are written, encoded by hand:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

The first event of a file carries ``file_version = "brain.Event:2"``. :class:`EventWriter` appends one event
per metrics record (the file is opened per record, so a killed run leaves whole records behind);
:func:`read_events` decodes such a file back, checking every CRC. A resumed run starts a new file whose
steps restart below the old file's last one, which TensorBoard resolves by dropping the old file's events
past the restart ("purging expired events").
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

FILE_VERSION = "brain.Event:2"
_MASK_DELTA = 0xA282EAD8


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # reflected Castagnoli polynomial
        table.append(crc)
    return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, e.g. ``crc32c(b"123456789") == 0xE3069283``."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: the CRC-32C rotated right by 15 bits plus a constant (mod 2³²)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """``data`` framed as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # int64: negative numbers as their two's complement (10 bytes)
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def encode_event(
    wall_time: float, step: int = 0, *, scalars: Mapping[str, float] | None = None, file_version: str | None = None
) -> bytes:
    """The protobuf bytes of an ``Event`` with ``scalars`` as its summary values (or a ``file_version``)."""
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value))
            for tag, value in scalars.items()
        )
        out += _length_delimited(5, values)
    return out


def scalars_of(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a metrics record (not ``step``; booleans and strings skipped)."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "step" and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


class EventWriter:
    """Appends scalar events to a new ``events.out.tfevents.<time>.<host>.<pid>`` file in ``directory``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.directory / name
        self._append(encode_event(now, file_version=FILE_VERSION))

    def _append(self, event: bytes) -> None:
        with self.path.open("ab") as f:
            f.write(tfrecord(event))

    def write(self, step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> None:
        """One event at ``step`` holding every ``tag: value`` of ``scalars`` (nothing if it is empty)."""
        if scalars:
            self._append(encode_event(time.time() if wall_time is None else wall_time, int(step), scalars=scalars))

    def write_record(self, record: Mapping[str, Any]) -> None:
        """A metrics record (``{"step": ..., name: value, ...}``) as one event of its numeric entries."""
        self.write(int(record["step"]), scalars_of(record))


# -- reading back ------------------------------------------------------------------------------------------


def read_records(path: str | Path) -> Iterator[bytes]:
    """The data of every TFRecord in ``path``; a bad checksum or a truncated record is a ``ValueError``."""
    raw = Path(path).read_bytes()
    pos = 0
    while pos < len(raw):
        if pos + 12 > len(raw):
            raise ValueError(f"{path}: truncated record header at byte {pos}")
        header = raw[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", raw[pos + 8 : pos + 12])
        if header_crc != masked_crc32c(header):
            raise ValueError(f"{path}: bad length checksum at byte {pos}")
        end = pos + 12 + length
        if end + 4 > len(raw):
            raise ValueError(f"{path}: truncated record at byte {pos}")
        data = raw[pos + 12 : end]
        if struct.unpack("<I", raw[end : end + 4])[0] != masked_crc32c(data):
            raise ValueError(f"{path}: bad data checksum at byte {pos}")
        yield data
        pos = end + 4


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)`` of a protobuf message: ints, 8/4-byte chunks or sub-bytes."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while pos < len(data):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value: Any = varint()
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        elif wire == 2:
            length = varint()
            value, pos = data[pos : pos + length], pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def decode_event(data: bytes) -> dict[str, Any]:
    """``{"wall_time", "step", "file_version"?, "scalars": {tag: value}}`` of an ``Event``'s bytes."""
    event: dict[str, Any] = {"wall_time": 0.0, "step": 0, "scalars": {}}
    for field, _, value in _fields(data):
        if field == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2:
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3:
            event["file_version"] = value.decode()
        elif field == 5:
            for sub, _, summary_value in _fields(value):
                if sub != 1:
                    continue
                parts = {f: v for f, _, v in _fields(summary_value)}
                event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
    return event


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Every event of an event file, decoded (:func:`decode_event`), CRCs checked."""
    return [decode_event(data) for data in read_records(path)]
