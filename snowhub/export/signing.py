"""Ed25519 signatures of task bundles: who made a bundle, not only whether it is intact.

A bundle's manifest (``snowtask.json``) lists every other member's size and sha256, so a signature over the
manifest's bytes covers the whole bundle. ``snowhub export task --sign KEYFILE`` adds ``signature.json``
(``{"algorithm": "ed25519", "public_key": <64 hex>, "signature": <128 hex>}``); ``snowhub import`` checks it
and accepts the signer only if the hub trusts its public key (``snowhub trust add``). Keys are PEM files as
OpenSSL writes them (``openssl genpkey -algorithm ed25519 -out key.pem``, ``openssl pkey -in key.pem -pubout
-out key.pub``) or as :func:`generate_key` does; a public key may also be given as its 64 hex digits.
Signing and checking go through the ``cryptography`` library.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from snowhub.errors import ConfigError
from snowhub.export.errors import BundleError

ALGORITHM = "ed25519"
_HEX_KEY = re.compile(r"^[0-9a-f]{64}$")


def fingerprint(public_key: str) -> str:
    """A short name of a public key (64 hex digits): ``ed25519:`` and the first 16 hex digits of its sha256."""
    return f"{ALGORITHM}:{hashlib.sha256(bytes.fromhex(public_key)).hexdigest()[:16]}"


def _raw(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def generate_key(private_path: Path | str) -> tuple[Path, Path, str]:
    """Write a new Ed25519 private key to `private_path` (PEM, PKCS#8, mode 0600) and its public key beside it
    (``<name>.pub``, PEM). Returns both paths and the public key (64 hex digits).

    Raises:
        ConfigError: a file exists already, or cannot be written.
    """
    private_path = Path(private_path).expanduser()
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} already exists; choose another key file name")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    except OSError as error:
        raise ConfigError(f"cannot write {private_path} ({error.strerror or error})") from None
    return private_path, public_path, _raw(key.public_key())


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file `path` (unencrypted PKCS#8, as OpenSSL or :func:`generate_key` write).

    Raises:
        ConfigError: missing, unreadable, encrypted, or not an Ed25519 private key.
    """
    path = Path(path).expanduser()
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise ConfigError(f"cannot read the signing key {path} ({error.strerror or error})") from None
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path} is not an unencrypted PEM private key ({' '.join(str(error).split())[:80]})") \
            from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key; make one with "
                          "`snowhub keys generate` or `openssl genpkey -algorithm ed25519`")
    return key


def public_key_of(value: str | Path) -> str:
    """A public key as 64 lowercase hex digits, from a PEM public key file, a PEM private key file, or the hex.

    Raises:
        ConfigError: none of these, or not an Ed25519 key.
    """
    text = str(value).strip().lower()
    if _HEX_KEY.match(text):
        return text
    path = Path(value).expanduser()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{value} is neither 64 hex digits nor a readable key file ({error.strerror or error})") \
            from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        return _raw(load_private_key(path).public_key())
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return _raw(key)


def sign(key: Ed25519PrivateKey, message: bytes) -> dict:
    """``signature.json``'s content: `message` (the manifest's bytes) signed by `key`."""
    return {"algorithm": ALGORITHM, "public_key": _raw(key.public_key()), "signature": key.sign(message).hex()}


def check(signature: dict, message: bytes, where: Path) -> str:
    """The signer's public key (64 hex) if `signature` (a schema-checked ``signature.json``) signs `message`.

    Raises:
        BundleError: the signature does not match: the manifest, hence the bundle, changed after signing.
    """
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(signature["public_key"])).verify(
            bytes.fromhex(signature["signature"]), message)
    except (InvalidSignature, ValueError):
        raise BundleError(f"{where}: its signature does not match its content (signed by "
                          f"{fingerprint(signature['public_key'])}); it was changed after it was signed, "
                          "not imported") from None
    return signature["public_key"]
