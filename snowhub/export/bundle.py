"""Task bundles (``.snowtask``): one task of a hub in one zip file, to import into another hub.

Members (flat, no folders)::

    snowtask.json       the manifest: format, and every other member's size and sha256
    task.json           class names, hyper-parameters with the DeltaShape, channel pooling indices, metrics,
                        dataset summary, the probe set's environment, and where the task came from
    source.json         the source's identity: name, taps, weights sha256 (and its tensors' digest)
    delta.safetensors   the delta's weights (the hub's file, byte for byte)
    probe.safetensors   the probe set: uint8 images, labels, the logits recorded at registration
    README.md           a card (Hugging Face front matter, what the task is, how to import it)
    signature.json      optional: an Ed25519 signature of snowtask.json's bytes (:mod:`snowhub.export.signing`)

Reading trusts nothing: only these names (no paths, so no ``..`` or absolute member), each once, stored or
deflated, unencrypted; declared sizes within :data:`MAX_MEMBER_BYTES` / :data:`MAX_BUNDLE_BYTES` (a zip bomb
is refused before anything is decompressed), reads capped at the declared size, and every member's sha256
and size equal to the manifest's.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from snowhub._version import __version__
from snowhub.export.errors import BundleError
from snowhub.store.files import atomic_write, sha256_file

FORMAT = "snowtask/1"
MANIFEST = "snowtask.json"
MEMBERS = ("task.json", "source.json", "delta.safetensors", "probe.safetensors", "README.md")
SIGNATURE = "signature.json"  # not in the manifest: it signs the manifest
MAX_BUNDLE_BYTES = 2 << 30  # 2 GiB uncompressed, all members together
MAX_MEMBER_BYTES = {MANIFEST: 1 << 20, SIGNATURE: 4 << 10, "task.json": 64 << 20, "source.json": 1 << 20,
                    "README.md": 4 << 20}
_CHUNK = 1 << 20


@dataclass
class Bundle:
    """A bundle's verified content: the manifest, the two JSON members, and the raw bytes of the others."""

    manifest: dict
    task: dict
    source: dict
    delta: bytes
    probe: bytes
    card: str
    sha256: str  # of the whole bundle file
    manifest_bytes: bytes = b""  # snowtask.json as stored: what a signature signs
    signature: dict | None = None  # signature.json, when the bundle is signed


def write_bundle(path: Path, task: dict, source: dict, delta: bytes, probe: bytes, card: str,
                 sign: Callable[[bytes], dict] | None = None) -> dict:
    """Write a bundle to `path` with :func:`~snowhub.store.files.atomic_write`; returns the manifest.

    With `sign` (the manifest's bytes in, ``signature.json``'s content out), the bundle is signed.

    Raises:
        BundleError: `path` exists, or cannot be written.
    """
    path = Path(path).expanduser().absolute()
    if path.exists():
        raise BundleError(f"{path} already exists; choose another `output` file or remove it")
    data = {"task.json": _json(task), "source.json": _json(source), "delta.safetensors": delta,
            "probe.safetensors": probe, "README.md": card.encode("utf-8")}
    manifest = {"format": FORMAT, "snowhub": __version__,
                "members": {n: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in data.items()}}
    try:
        with atomic_write(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, _json(manifest))
            if sign is not None:
                zf.writestr(SIGNATURE, _json(sign(_json(manifest))))
            for name, blob in data.items():
                # safetensors and probe images compress little; storing them keeps export and import fast
                method = zipfile.ZIP_STORED if name.endswith(".safetensors") else zipfile.ZIP_DEFLATED
                zf.writestr(name, blob, compress_type=method)
    except OSError as exc:
        raise BundleError(f"cannot write {path} ({exc.strerror or exc}); free some space or choose another "
                          "`output`") from None
    return manifest


def _json(value: dict) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _unsafe(name: str) -> bool:
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    return posix.is_absolute() or windows.is_absolute() or bool(windows.drive) or ".." in posix.parts \
        or ".." in windows.parts


def _check_entries(where: Path, infos: list[zipfile.ZipInfo], limit: int) -> None:
    """Refuse unsafe, unknown, repeated, encrypted or oversized members from the central directory alone."""
    seen: set[str] = set()
    for info in infos:
        if _unsafe(info.filename):
            raise BundleError(f"{where} has a member with an unsafe path ({info.filename!r}); refusing the bundle")
        if info.filename not in (MANIFEST, SIGNATURE, *MEMBERS):
            raise BundleError(f"{where} has an unexpected member {info.filename!r}; it is not a snowtask bundle "
                              "or it was edited")
        if info.filename in seen:
            raise BundleError(f"{where} holds {info.filename!r} twice; it was edited, export the task again")
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise BundleError(f"{where} is encrypted; snowtask bundles are never encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise BundleError(f"{where}: member {info.filename!r} uses an unsupported compression")
        cap = MAX_MEMBER_BYTES.get(info.filename, limit)
        if info.file_size > min(cap, limit):
            raise BundleError(f"{where}: member {info.filename!r} would unpack to {info.file_size:,} bytes, over "
                              f"the limit of {min(cap, limit):,}; refusing it (a zip bomb?)")
    total = sum(i.file_size for i in infos)
    if total > limit:
        raise BundleError(f"{where} would unpack to {total:,} bytes, over the limit of {limit:,}; refusing it "
                          "(a zip bomb?)")
    missing = [n for n in (MANIFEST, *MEMBERS) if n not in seen]
    if missing:
        raise BundleError(f"{where} lacks {', '.join(missing)}; it is not a complete snowtask bundle")


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: Path) -> bytes:
    """A member's bytes, never more than its declared size (a lying header cannot inflate past it)."""
    chunks, size = [], 0
    with zf.open(info) as fh:
        while chunk := fh.read(min(_CHUNK, info.file_size - size + 1)):
            size += len(chunk)
            if size > info.file_size:
                raise BundleError(f"{where}: member {info.filename!r} unpacks past its declared size; refusing it")
            chunks.append(chunk)
    return b"".join(chunks)


def _load_json(blob: bytes, name: str, where: Path) -> dict:
    try:
        value = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError(f"{where}: {name} is not valid JSON; the bundle is damaged, export the task again") from None
    if not isinstance(value, dict):
        raise BundleError(f"{where}: {name} is not a JSON object; the bundle is damaged, export the task again")
    return value


def read_bundle(path: Path | str, limit: int = MAX_BUNDLE_BYTES) -> Bundle:
    """Read and verify the bundle at `path` (see the module docstring for every check).

    Args:
        limit: the most bytes all members may unpack to together.

    Raises:
        BundleError: missing, not a zip, truncated, unsafe, a zip bomb, or a member that does not match the
            manifest; the message names the member and what to do.
    """
    where = Path(path)
    if not where.is_file():
        raise BundleError(f"{where} does not exist or is not a file; give a .snowtask file from `snowhub export task`")
    try:
        sha256 = sha256_file(where)
        with zipfile.ZipFile(where) as zf:
            infos = zf.infolist()
            _check_entries(where, infos, limit)
            blobs = {info.filename: _read(zf, info, where) for info in infos}
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{where} is not a readable snowtask bundle ({exc}); it is truncated or damaged, "
                          "copy or export it again") from None
    except (EOFError, OSError, ValueError) as exc:  # zlib errors, a truncated stream
        raise BundleError(f"{where} is truncated or damaged ({exc}); copy or export it again") from None
    manifest = _load_json(blobs[MANIFEST], MANIFEST, where)
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{where} has format {manifest.get('format')!r}, this snowhub reads {FORMAT!r}")
    listed = manifest.get("members")
    if not isinstance(listed, dict) or sorted(listed) != sorted(MEMBERS):
        raise BundleError(f"{where}: the manifest does not list exactly the bundle's members; it was edited")
    for name in MEMBERS:
        entry, blob = listed[name], blobs[name]
        if not isinstance(entry, dict) or entry.get("size") != len(blob) or \
                entry.get("sha256") != hashlib.sha256(blob).hexdigest():
            raise BundleError(f"{where}: {name} does not match the bundle's manifest (sha256 or size); the bundle was "
                              "edited or damaged, export the task again")
    try:
        card = blobs["README.md"].decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"{where}: README.md is not UTF-8 text; export the task again") from None
    signature = _load_json(blobs[SIGNATURE], SIGNATURE, where) if SIGNATURE in blobs else None
    return Bundle(manifest, _load_json(blobs["task.json"], "task.json", where),
                  _load_json(blobs["source.json"], "source.json", where), blobs["delta.safetensors"],
                  blobs["probe.safetensors"], card, sha256, blobs[MANIFEST], signature)
