"""Cryptographic building blocks, all from ``cryptography``.

- Key agreement: X25519. A unit has two fresh key pairs per round: ``c`` (encrypts shares to a
  neighbour) and ``s`` (its pairwise masks).
- Key derivation: HKDF-SHA256 with an ``info`` naming purpose, round and the pair.
- Mask expansion: ChaCha20 keyed by a 32-byte seed (zero nonce: every key is used once) gives
  the pseudo-random stream, read as 64-bit words reduced mod 2^b.
- Share encryption: ChaCha20-Poly1305 with the sender, receiver and round as associated data.
- Identity: Ed25519 signatures over key advertisements.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RAW = serialization.Encoding.Raw


def new_x25519() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(RAW, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def x25519_from_private(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    return private.exchange(X25519PublicKey.from_public_bytes(peer_public))


X25519_P = 2**255 - 19
_PROBE = X25519PrivateKey.generate()


def x25519_public_problem(public: bytes) -> str | None:
    """Why ``public`` is not an acceptable X25519 public key, or None.

    Refused: anything but 32 bytes; non-canonical encodings (value >= 2^255 - 19, top bit
    included: two encodings of one point would pass a byte-wise duplicate check); and points of
    small order. X25519 scalars are clamped to multiples of the cofactor 8, so the shared
    secret with any scalar is all-zero exactly for points of order dividing 8; OpenSSL refuses
    that result, which :func:`agree` with a probe key detects."""
    if not isinstance(public, bytes) or len(public) != 32:
        return f"an X25519 key is 32 bytes, got {len(public) if isinstance(public, bytes) else type(public).__name__}"
    if int.from_bytes(public, "little") >= X25519_P:
        return "a non-canonical X25519 encoding"
    try:
        agree(_PROBE, public)
    except ValueError:
        return "a low-order X25519 point (its shared secrets are all-zero)"
    return None


def derive(secret: bytes, info: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info.encode()).derive(secret)


_CHUNK = 1 << 20  # bytes of keystream per call: the zero input stays in cache
_ZEROS = bytes(_CHUNK)


def keystream_into(seed: bytes, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (C-contiguous uint64) with the ChaCha20 keystream of a 32-byte seed, read as
    native 64-bit words, and return it. Writing into a reused buffer avoids allocating (and
    page-faulting) 8 bytes per value for every mask; the words are the same as :func:`prg`'s
    before reduction."""
    if out.dtype != np.uint64 or not out.flags.c_contiguous:
        raise ValueError("out must be a C-contiguous uint64 array")
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    raw = memoryview(out.view(np.uint8).reshape(-1))
    for start in range(0, len(raw), _CHUNK):
        end = min(start + _CHUNK, len(raw))
        encryptor.update_into(_ZEROS[: end - start], raw[start:end])
    return out


def prg(seed: bytes, length: int, bits: int) -> np.ndarray:
    """``length`` pseudo-random values in Z_(2^bits) from a 32-byte seed (ChaCha20 keystream)."""
    out = keystream_into(seed, np.empty(length, dtype=np.uint64))
    out &= np.uint64((1 << bits) - 1)
    return out


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    import os

    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    return ChaCha20Poly1305(key).decrypt(ciphertext[:12], ciphertext[12:], associated)


def sign(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    return key.sign(payload)


def verify(public: bytes, signature: bytes, payload: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, payload)
        return True
    except (InvalidSignature, ValueError):
        return False


def new_identity() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()
