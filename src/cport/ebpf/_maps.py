"""One BPF map from user space: lookups, updates and deletes, batched where the kernel can.

Keys and values are ``bytes`` packed with :mod:`cport.ebpf._layout`. Batched updates and
deletes (``BPF_MAP_UPDATE_BATCH``/``DELETE_BATCH``) are used for every map type that supports
them; the first ``EINVAL``/``ENOTSUPP`` for a map switches it to one syscall per element.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator, Sequence
from ctypes import c_uint32
from dataclasses import dataclass

from cport.ebpf._libbpf import BatchOpts, check, lib, obj_info, possible_cpus

_MAP_INFO = struct.Struct("=IIIIII16s")  # type, id, key_size, value_size, max_entries, flags, name
_NOT_SUPPORTED = {errno.EINVAL, errno.EOPNOTSUPP, 524}  # 524: ENOTSUPP (kernel-internal)
BATCH = 4096

MAP_TYPES = {
    1: "hash",
    2: "array",
    5: "percpu_hash",
    6: "percpu_array",
    9: "lru_hash",
    10: "lru_percpu_hash",
    11: "lpm_trie",
    27: "ringbuf",
}
_PERCPU = {5, 6, 10}


@dataclass(frozen=True, slots=True)
class MapInfo:
    """What the kernel says about a map."""

    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str

    @property
    def type_name(self) -> str:
        return MAP_TYPES.get(self.type, str(self.type))


def map_info(fd: int) -> MapInfo:
    raw = obj_info(fd, _MAP_INFO.size)
    t, ident, ks, vs, me, fl, name = _MAP_INFO.unpack(raw[: _MAP_INFO.size])
    return MapInfo(t, ident, ks, vs, me, fl, name.rstrip(b"\0").decode())


class BpfMap:
    """A map by file descriptor (owned: closed by :meth:`close`)."""

    def __init__(self, fd: int, name: str = "") -> None:
        self.fd = fd
        self.info = map_info(fd)
        self.name = name or self.info.name
        self.key_size = self.info.key_size
        self.value_size = self.info.value_size
        self.percpu = self.info.type in _PERCPU
        self.ncpus = possible_cpus() if self.percpu else 1
        # A per-CPU value is an array of values, each rounded up to 8 bytes.
        self.stride = (self.value_size + 7) // 8 * 8 if self.percpu else self.value_size
        self._batch_update = True
        self._batch_delete = True

    @classmethod
    def from_pin(cls, path: str | os.PathLike[str]) -> BpfMap:
        fd = check(
            lib().bpf_obj_get(os.fsencode(path)), f"opening pinned map {path}", code="not-pinned"
        )
        return cls(fd, os.path.basename(str(path)))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- single elements ----------------------------------------------------------------
    def lookup(self, key: bytes) -> bytes | None:
        buf = ctypes.create_string_buffer(self.stride * self.ncpus)
        rc = lib().bpf_map_lookup_elem(self.fd, key, buf)
        if rc == -errno.ENOENT:
            return None
        check(rc, f"lookup in map {self.name}")
        return buf.raw

    def lookup_percpu(self, key: bytes) -> list[bytes]:
        """A per-CPU map's value on every possible CPU (empty if the key is absent)."""
        raw = self.lookup(key)
        if raw is None:
            return []
        return [raw[i * self.stride : i * self.stride + self.value_size] for i in range(self.ncpus)]

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        check(lib().bpf_map_update_elem(self.fd, key, value, flags), f"update of map {self.name}")

    def delete(self, key: bytes) -> bool:
        rc = lib().bpf_map_delete_elem(self.fd, key)
        if rc == -errno.ENOENT:
            return False
        check(rc, f"delete from map {self.name}")
        return True

    # -- many elements ------------------------------------------------------------------
    def update_many(self, items: Sequence[tuple[bytes, bytes]]) -> int:
        """Write every (key, value); returns how many were written."""
        if not items:
            return 0
        if self._batch_update:
            try:
                for i in range(0, len(items), BATCH):
                    self._update_batch(items[i : i + BATCH])
                return len(items)
            except _Unsupported:
                self._batch_update = False
        update = lib().bpf_map_update_elem
        fd = self.fd
        for key, value in items:
            rc = update(fd, key, value, 0)
            if rc < 0:
                check(rc, f"update of map {self.name}")
        return len(items)

    def _update_batch(self, chunk: Sequence[tuple[bytes, bytes]]) -> None:
        keys = b"".join(k for k, _ in chunk)
        values = b"".join(v for _, v in chunk)
        count = c_uint32(len(chunk))
        opts = BatchOpts(ctypes.sizeof(BatchOpts), 0, 0)
        rc = lib().bpf_map_update_batch(self.fd, keys, values, ctypes.byref(count), opts)
        if rc < 0:
            if -rc in _NOT_SUPPORTED and count.value == 0:
                raise _Unsupported
            check(rc, f"batch update of map {self.name} ({count.value}/{len(chunk)} written)")

    def delete_many(self, keys: Sequence[bytes]) -> int:
        """Delete every key (absent keys are ignored); returns how many were asked."""
        if not keys:
            return 0
        if self._batch_delete:
            try:
                for i in range(0, len(keys), BATCH):
                    self._delete_batch(keys[i : i + BATCH])
                return len(keys)
            except _Unsupported:
                self._batch_delete = False
        delete = lib().bpf_map_delete_elem
        fd = self.fd
        for key in keys:
            rc = delete(fd, key)
            if rc < 0 and rc != -errno.ENOENT:
                check(rc, f"delete from map {self.name}")
        return len(keys)

    def _delete_batch(self, chunk: Sequence[bytes]) -> None:
        count = c_uint32(len(chunk))
        opts = BatchOpts(ctypes.sizeof(BatchOpts), 0, 0)
        rc = lib().bpf_map_delete_batch(self.fd, b"".join(chunk), ctypes.byref(count), opts)
        if rc < 0:
            if -rc in _NOT_SUPPORTED and count.value == 0:
                raise _Unsupported
            if rc == -errno.ENOENT:
                # a batch stops at the first absent key: delete the rest one by one
                rest = chunk[count.value + 1 :]
                for key in rest:
                    self.delete(key)
                return
            check(rc, f"batch delete from map {self.name}")

    def keys(self) -> Iterator[bytes]:
        """Every key, by ``get_next_key`` (the kernel's order; entries may change meanwhile)."""
        next_key = lib().bpf_map_get_next_key
        cur = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        rc = next_key(self.fd, None, nxt)
        while rc == 0:
            yield nxt.raw
            ctypes.memmove(cur, nxt, self.key_size)
            rc = next_key(self.fd, cur, nxt)
        if rc != -errno.ENOENT:
            check(rc, f"iterating map {self.name}")

    def items(self) -> list[tuple[bytes, bytes]]:
        """Every (key, value) (for per-CPU maps: the CPUs' values concatenated, each
        ``stride`` bytes)."""
        out = []
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None:
                out.append((key, value))
        return out

    def clear(self) -> int:
        keys = list(self.keys())
        return self.delete_many(keys)

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())


class _Unsupported(Exception):
    """This map type has no batch operation of that kind."""


__all__ = ["BpfMap", "MapInfo", "map_info"]
