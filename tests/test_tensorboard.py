"""TensorBoard events mirrored from metrics.jsonl: the framing, CRCs and protobufs decode back."""

import json
import struct

from metajax._src.experiment.tensorboard import EventWriter, MetricsMirror, crc32c


def _unmask(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf):
    i, out = 0, []
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        out.append((number, value))
    return out


def read_events(path):
    """An independent reader: checks both CRCs of every record, decodes Event protos."""
    data, i, events = path.read_bytes(), 0, []
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        assert _unmask(struct.unpack("<I", data[i + 8:i + 12])[0]) == crc32c(data[i:i + 8])
        payload = data[i + 12:i + 12 + n]
        assert _unmask(struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0]) == crc32c(payload)
        i += 16 + n
        fields = dict(_fields(payload))
        scalars = {}
        if 5 in fields:
            for _, value in _fields(fields[5]):
                v = dict(_fields(value))
                scalars[v[1].decode()] = struct.unpack("<f", v[2])[0]
        events.append((fields.get(2, 0), fields.get(3), scalars))
    return events


def test_crc32c_known_vectors():
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4: 32 bytes of zeros


def test_events_decode_to_the_records(tmp_path):
    writer = EventWriter(tmp_path)
    writer.write([{"method": "maml", "step": 3, "loss": 0.5, "tasks_per_s": 100},
                  {"method": "maml", "step": 6, "loss": 0.25, "note": "text", "flag": True}])
    events = read_events(writer.path)
    assert events[0][1] == b"brain.Event:2"
    assert events[1] == (3, None, {"maml/loss": 0.5, "maml/tasks_per_s": 100.0})
    assert events[2] == (6, None, {"maml/loss": 0.25})


def test_mirror_follows_a_growing_file_and_skips_a_partial_line(tmp_path):
    source = tmp_path / "metrics.jsonl"
    with MetricsMirror(tmp_path, interval=0.01) as mirror:
        source.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n" + '{"step": 2, "lo')
        mirror._drain()
        assert [e[0] for e in read_events(mirror.writer.path)[1:]] == [1]
        source.write_text(source.read_text() + 'ss": 1.0}\n')
    assert [e[2] for e in read_events(mirror.writer.path)[1:]] == [{"loss": 2.0}, {"loss": 1.0}]
