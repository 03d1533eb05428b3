"""Compiling the BPF programs on first use, cached by content hash.

The C sources ship inside the package (``cport/ebpf/bpf/``). :func:`build` compiles them with
clang into ``<cache_dir>/cport-<hash>.bpf.o``, where the hash covers the sources, the compiler
(path, size, mtime) and the flags, so an upgrade of either recompiles and an unchanged
install never does. Missing tools raise :class:`~cport.errors.EbpfToolMissing` naming the
tool and the Debian package.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cport.errors import EbpfError, EbpfToolMissing

SOURCE_DIR = Path(__file__).parent / "bpf"
SOURCES = ("cport.bpf.c", "cport.h")
MAIN = "cport.bpf.c"
_ARCH = {"x86_64": ("x86", "x86_64-linux-gnu"), "aarch64": ("arm64", "aarch64-linux-gnu")}
_CLANGS = ("clang", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14")


@dataclass(frozen=True, slots=True)
class Build:
    """A compiled object and its identity (`build_id`: the first 8 bytes of its hash)."""

    path: Path
    digest: str

    @property
    def build_id(self) -> int:
        return int(self.digest[:16], 16)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cport/bpf``, else ``~/.cache/cport/bpf``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cport" / "bpf"


def find_clang() -> str:
    for name in _CLANGS:
        found = shutil.which(name)
        if found:
            return found
    raise EbpfToolMissing(
        "clang not found: the eBPF enforcer compiles its programs on first use "
        "(Debian: apt-get install clang llvm libbpf-dev)"
    )


def compile_flags() -> list[str]:
    arch, multiarch = _ARCH.get(platform.machine(), ("x86", "x86_64-linux-gnu"))
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        raise EbpfToolMissing(
            "libbpf headers not found (/usr/include/bpf/bpf_helpers.h): "
            "Debian: apt-get install libbpf-dev"
        )
    if not Path("/usr/include/linux/bpf.h").exists():
        raise EbpfToolMissing(
            "kernel UAPI headers not found (/usr/include/linux/bpf.h): "
            "Debian: apt-get install linux-libc-dev"
        )
    return [
        "-O2",
        "-g",
        "-Wall",
        "-Werror",
        "-target",
        "bpf",
        f"-D__TARGET_ARCH_{arch}",
        f"-I/usr/include/{multiarch}",
        f"-I{SOURCE_DIR}",
    ]


def source_digest(clang: str, flags: list[str]) -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0")
        h.update((SOURCE_DIR / name).read_bytes())
    st = os.stat(clang)
    h.update(f"{os.path.realpath(clang)}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(" ".join(flags).encode())
    return h.hexdigest()


def build(cache_dir: Path | None = None) -> Build:
    """The compiled object, from the cache or freshly compiled (atomically renamed into the
    cache, so concurrent builders never see half a file)."""
    clang = find_clang()
    flags = compile_flags()
    digest = source_digest(clang, flags)
    cache = cache_dir or default_cache_dir()
    out = cache / f"cport-{digest[:24]}.bpf.o"
    if out.exists():
        return Build(out, digest)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    cmd = [clang, *flags, "-c", str(SOURCE_DIR / MAIN), "-o", str(tmp)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EbpfError(f"running clang failed: {exc}", code="bpf-compile-failed") from None
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise EbpfError(
            f"clang could not compile {MAIN} (exit {proc.returncode}):\n{tail}",
            code="bpf-compile-failed",
        )
    os.replace(tmp, out)
    for stale in cache.glob("cport-*.bpf.o"):  # older sources or compilers: never used again
        if stale != out:
            stale.unlink(missing_ok=True)
    return Build(out, digest)
