"""Decode the few protobuf bodies typed kubectl commands send (`create namespace|configmap|secret|
serviceaccount`) into JSON objects; every other protobuf body is refused with a clear 415.

Wire format: the magic b"k8s\\0" then a runtime.Unknown {typeMeta{apiVersion=1, kind=2}=1, raw=2}; `raw`
is the object, whose field numbers come from k8s.io/api's generated.proto.
"""

from __future__ import annotations

import base64

MAGIC = b"k8s\x00"


class UnsupportedProtobuf(ValueError):
    """A protobuf body of a kind this decoder does not know."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs: varints as int, length-delimited as bytes."""
    fields, pos = [], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(data, pos)
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, pos = data[pos:pos + size], pos + size
        else:
            raise UnsupportedProtobuf(f"unsupported protobuf wire type {wire_type}")
        fields.append((number, value))
    return fields


def _map_entry(data: bytes) -> tuple[str, bytes]:
    entry = dict(_fields(data))
    return bytes(entry.get(1, b"")).decode(), bytes(entry.get(2, b""))


def _metadata(data: bytes) -> dict:
    meta: dict = {}
    for number, value in _fields(data):
        if number in (1, 2, 3) and isinstance(value, bytes):
            meta[("name", "generateName", "namespace")[number - 1]] = value.decode()
        elif number in (11, 12) and isinstance(value, bytes):
            key, item = _map_entry(value)
            meta.setdefault("labels" if number == 11 else "annotations", {})[key] = item.decode()
        elif number == 14 and isinstance(value, bytes):
            meta.setdefault("finalizers", []).append(value.decode())
    return meta


def _object(kind: str, raw: bytes) -> dict:
    obj: dict = {}
    for number, value in _fields(raw):
        if number == 1 and isinstance(value, bytes):
            obj["metadata"] = _metadata(value)
        elif kind == "ConfigMap" and number in (2, 3) and isinstance(value, bytes):
            key, item = _map_entry(value)
            if number == 2:
                obj.setdefault("data", {})[key] = item.decode()
            else:
                obj.setdefault("binaryData", {})[key] = base64.b64encode(item).decode()
        elif kind == "Secret" and number in (2, 4) and isinstance(value, bytes):
            key, item = _map_entry(value)
            if number == 2:
                obj.setdefault("data", {})[key] = base64.b64encode(item).decode()
            else:
                obj.setdefault("stringData", {})[key] = item.decode()
        elif kind == "Secret" and number == 3 and isinstance(value, bytes):
            obj["type"] = value.decode()
        elif kind in ("ConfigMap", "Secret") and number == (4 if kind == "ConfigMap" else 5):
            obj["immutable"] = bool(value)
    return obj


SUPPORTED_KINDS = ("Namespace", "ConfigMap", "Secret", "ServiceAccount")


def decode(body: bytes) -> dict:
    """The JSON form of a protobuf request body (only SUPPORTED_KINDS; their spec/status are dropped)."""
    if not body.startswith(MAGIC):
        raise UnsupportedProtobuf("not a Kubernetes protobuf body (no k8s magic prefix)")
    envelope = dict(_fields(body[len(MAGIC):]))
    type_meta = dict(_fields(bytes(envelope.get(1, b""))))
    api_version = bytes(type_meta.get(1, b"")).decode()
    kind = bytes(type_meta.get(2, b"")).decode()
    if kind not in SUPPORTED_KINDS or api_version != "v1":
        raise UnsupportedProtobuf(f"protobuf bodies of {api_version}/{kind} are not supported")
    return {"apiVersion": api_version, "kind": kind, **_object(kind, bytes(envelope.get(2, b"")))}
