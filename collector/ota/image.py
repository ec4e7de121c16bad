"""An update image and its manifest (pure: bytes in, bytes out; no network, no clock).

An image is a folder or a tar file (optionally compressed) holding the firmware package as it
goes into a slot on the device: `etfw/__init__.py` or `.mpy` and the other modules, with the
same relative paths. Its version is FW_VERSION of `etfw/__init__.py`, or the first line of a
`VERSION` file at the top (needed when the package is compiled to .mpy only).

The manifest is the text the device verifies every file against (etfw/ota.py reads it line
by line, so it never holds it as a whole):

    evalterm-fw 1
    ver <version>
    <sha256 hex> <size> <path>        one line per file, in the order the device fetches them

Its SHA-256 and size go into the signed `update` command, so the device key's HMAC covers the
manifest and, through it, every byte of every file.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from collector.ota import OtaError

__all__ = ["CHUNK_MAX", "MAX_FILES", "MAX_IMAGE_BYTES", "Image", "load_image", "parse_manifest"]

MAX_FILES = 64  # the device's limit (etfw/ota.py _MAX_FILES)
MAX_MANIFEST = 8192  # the device's limit on the manifest (etfw/command.py, `size`)
MAX_IMAGE_BYTES = 1024 * 1024  # a slot on a 4 MB board's filesystem (docs/firmware.md)
CHUNK_MAX = 768  # the largest chunk a device may ask for (broker and umqtt limits)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_VERSION = re.compile(r"[A-Za-z0-9_.+-]{1,32}")
_FW_VERSION = re.compile(rb'^FW_VERSION\s*=\s*"([^"]*)"', re.M)


@dataclass(frozen=True)
class Image:
    version: str
    files: tuple[tuple[str, bytes], ...]  # (path in the slot, content), in manifest order
    manifest: bytes

    @property
    def manifest_sha(self) -> str:
        return hashlib.sha256(self.manifest).hexdigest()

    @property
    def size(self) -> int:
        return sum(len(b) for _, b in self.files)

    def file(self, index: int) -> bytes:
        """File `index` as the device numbers them: 0 the manifest, 1.. the files."""
        return self.manifest if index == 0 else self.files[index - 1][1]


def _check_path(path: str) -> str:
    parts = PurePosixPath(path).parts
    if not 1 <= len(parts) <= 2 or not all(_NAME.fullmatch(p) and p not in (".", "..")
                                             for p in parts):
        raise OtaError(f"image file {path!r}: paths are 1-2 levels of A-Z a-z 0-9 _ . - "
                       "(e.g. etfw/app.mpy); rebuild the image")
    if path == "MANIFEST":
        raise OtaError("image has a file named MANIFEST: that name is the manifest's; remove it")
    return "/".join(parts)


def _read(path: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                files[p.relative_to(path).as_posix()] = p.read_bytes()
        return files
    if not path.exists():
        raise OtaError(f"image {path} does not exist: give a folder or a tar file")
    try:
        with tarfile.open(path) as tf:
            for m in tf.getmembers():
                if m.isfile():
                    f = tf.extractfile(m)
                    if f is not None:
                        files[PurePosixPath(m.name.removeprefix("./")).as_posix()] = f.read()
                elif not m.isdir():
                    raise OtaError(f"image {path}: {m.name} is a link or device; an image holds "
                                   "plain files only")
    except (tarfile.TarError, OSError) as exc:
        raise OtaError(f"image {path} is neither a folder nor a readable tar file ({exc})") \
            from None
    return files


def _version(files: dict[str, bytes]) -> str:
    if "VERSION" in files:
        lines = files.pop("VERSION").decode("utf-8", "replace").splitlines()
        ver = lines[0].strip() if lines else ""
    elif "etfw/__init__.py" in files:
        m = _FW_VERSION.search(files["etfw/__init__.py"])
        ver = m.group(1).decode("utf-8", "replace") if m else ""
    else:
        raise OtaError("image has no version: add a VERSION file (one line) or etfw/__init__.py "
                       "with FW_VERSION")
    if not _VERSION.fullmatch(ver):
        raise OtaError(f"image version {ver!r}: use 1-32 of A-Z a-z 0-9 _ . + -")
    return ver


def load_image(path: Path) -> Image:
    """The image at `path` (a folder or a tar file), checked; raises OtaError."""
    files = _read(path)
    version = _version(files)
    if not any(n in files for n in ("etfw/__init__.py", "etfw/__init__.mpy")):
        raise OtaError(f"image {path} has no etfw/__init__.py or .mpy: a slot without the "
                       "firmware package cannot boot")
    if not any(n in files for n in ("etfw/update.py", "etfw/update.mpy")):
        raise OtaError(f"image {path} has no etfw/update.py or .mpy: the new version could "
                       "not be confirmed and would roll back; build it from firmware/etfw")
    named = sorted((_check_path(n), b) for n, b in files.items())
    if len(named) > MAX_FILES:
        raise OtaError(f"image has {len(named)} files, the device takes at most {MAX_FILES}")
    total = sum(len(b) for _, b in named)
    if total > MAX_IMAGE_BYTES:
        raise OtaError(f"image is {total} bytes, a slot holds at most {MAX_IMAGE_BYTES}")
    lines = ["evalterm-fw 1", f"ver {version}"]
    lines += [f"{hashlib.sha256(b).hexdigest()} {len(b)} {n}" for n, b in named]
    manifest = ("\n".join(lines) + "\n").encode()
    if len(manifest) > MAX_MANIFEST:
        raise OtaError(f"manifest is {len(manifest)} bytes, the device takes {MAX_MANIFEST}")
    return Image(version, tuple(named), manifest)


def parse_manifest(text: bytes) -> tuple[str, list[tuple[str, int, str]]]:
    """(version, [(path, size, sha256)]) of a manifest; ValueError if it is not one."""
    lines = text.decode().splitlines()
    if len(lines) < 3 or lines[0] != "evalterm-fw 1" or not lines[1].startswith("ver "):
        raise ValueError("not an evalterm manifest")
    entries = []
    for line in lines[2:]:
        sha, size, path = line.split(" ")
        entries.append((path, int(size), sha))
    return lines[1][4:], entries
