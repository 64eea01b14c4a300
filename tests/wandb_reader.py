"""Read a W&B offline `.wandb` file back: a 7-byte header, then LevelDB-log framed protobuf `Record`s.

Current wandb ships no Python reader for it. Layout: header ":W&B" + magic 0xBEE1 (LE u16) + version (u8); then
blocks of 32 KiB, each holding chunks of [crc32c (u32) | length (u16) | type (u8: 1 full, 2 first, 3 middle,
4 last) | data]; a block's tail shorter than a chunk header is zero padding. The first block includes the file header.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
CHUNK_HEADER = 7


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0, f"{path} is not a W&B transaction log"
    records, pending, offset = [], b"", 7
    while offset + CHUNK_HEADER <= len(data):
        space = BLOCK - offset % BLOCK
        if space < CHUNK_HEADER:
            offset += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + CHUNK_HEADER])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            offset += space
            continue
        chunk = data[offset + CHUNK_HEADER : offset + CHUNK_HEADER + length]
        offset += CHUNK_HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history_rows(records: list[wandb_internal_pb2.Record]) -> list[dict[str, object]]:
    """Each `history` record as {key: decoded JSON value}."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def config_values(records: list[wandb_internal_pb2.Record]) -> dict[str, object]:
    values: dict[str, object] = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                values[item.key] = json.loads(item.value_json)
    return values
