"""The dependency-free TensorBoard writer: CRC-32C, TFRecord framing, Event protobufs, and a training run."""

import struct

import numpy as np
import pytest

from jaxcert.train.configs import get_config, override
from jaxcert.train.logging import read_metrics
from jaxcert.train.tensorboard import (
    FILE_VERSION,
    EventWriter,
    crc32c,
    encode_event,
    masked_crc32c,
    read_events,
    scalars_of,
)
from jaxcert.workflow import train


def test_crc32c_matches_the_castagnoli_check_values():
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert crc32c(bytes(32)) == 0x8A9136AA and crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720, B.4
    crc = crc32c(b"abc")
    assert masked_crc32c(b"abc") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_an_event_is_the_protobuf_of_its_fields():
    data = encode_event(1.5, 7, scalars={"a": 0.25})
    value = b"\x0a\x01a" + b"\x15" + struct.pack("<f", 0.25)  # Value{tag=1: "a", simple_value=2: 0.25}
    summary = b"\x0a" + bytes([len(value)]) + value  # Summary{value=1}
    assert data == b"\x09" + struct.pack("<d", 1.5) + b"\x10\x07" + b"\x2a" + bytes([len(summary)]) + summary
    assert encode_event(2.0, 300)[9:] == b"\x10\xac\x02"  # step 300 as a varint
    assert encode_event(0.0, file_version=FILE_VERSION)[11:] == b"\x1a\x0d" + FILE_VERSION.encode()


def test_written_events_read_back_with_checked_crcs(tmp_path):
    writer = EventWriter(tmp_path / "tb")
    assert writer.path.name.startswith("events.out.tfevents.")
    writer.write_record({"step": 10, "epoch": 0, "loss": 0.5, "cert_acc": 0.125, "flag": True, "bad": float("nan")})
    writer.write_record({"step": 20, "loss": 0.25, "note": "text"})
    writer.write(-3, {"negative_step": 1.0})
    writer.write(30, {})  # nothing to write
    events = read_events(writer.path)
    assert events[0]["file_version"] == FILE_VERSION and events[0]["scalars"] == {}
    assert [(e["step"], e["scalars"]) for e in events[1:]] == [
        (10, {"epoch": 0.0, "loss": 0.5, "cert_acc": 0.125}),
        (20, {"loss": 0.25}),
        (-3, {"negative_step": 1.0}),
    ]
    assert all(e["wall_time"] > 1e9 for e in events)
    raw = bytearray(writer.path.read_bytes())
    raw[-6] ^= 0x01  # a flipped bit in the last event's payload
    writer.path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        read_events(writer.path)
    writer.path.write_bytes(bytes(raw[:-3]))
    with pytest.raises(ValueError, match="truncated"):
        read_events(writer.path)


def test_scalars_of_keeps_finite_numbers_but_not_the_step():
    assert scalars_of({"step": 3, "a": 1, "b": 2.5, "c": float("inf"), "d": False, "e": "x", "f": None}) == {
        "a": 1.0, "b": 2.5
    }  # fmt: skip


def test_tensorboard_reads_the_files(tmp_path):
    event_file_loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    writer = EventWriter(tmp_path)
    writer.write_record({"step": 5, "loss": 0.75, "clean_acc": 0.5})
    events = list(event_file_loader.LegacyEventFileLoader(str(writer.path)).Load())
    assert events[0].file_version == FILE_VERSION
    assert [(v.tag, v.simple_value) for v in events[1].summary.value] == [("loss", 0.75), ("clean_acc", 0.5)]
    assert events[1].step == 5


@pytest.mark.slow
def test_a_run_with_tensorboard_writes_each_metrics_record_as_an_event(tmp_path):
    config = override(get_config("tiny"), steps=15, log_every=5, out=str(tmp_path / "run"), tensorboard=True)
    train(config, progress=False, evaluate=False)
    (path,) = (tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*")
    events = read_events(path)[1:]
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [e["step"] for e in events] == [r["step"] for r in records] == [5, 10, 15]
    for event, record in zip(events, records, strict=True):
        assert set(event["scalars"]) == set(record) - {"step"}
        for key, value in event["scalars"].items():
            assert value == pytest.approx(record[key], rel=1e-6), key
    assert np.isfinite([e["scalars"]["loss"] for e in events]).all()
    train(override(config, tensorboard=False), progress=False, evaluate=False, resume=False)  # --fresh
    assert not (tmp_path / "run" / "tensorboard").exists()
