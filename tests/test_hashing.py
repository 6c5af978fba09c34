"""covid_xray.hashing: the one file digest behind checkpoints, weights and the dataset manifest."""

from __future__ import annotations

import hashlib

from covid_xray import checkpoints, data, hashing


def test_known_digests(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    abc = tmp_path / "abc"
    abc.write_bytes(b"abc")
    # FIPS 180-2 test vectors.
    assert hashing.sha256_file(empty) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert hashing.sha256_file(abc) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_file_larger_than_a_chunk(tmp_path):
    payload = bytes(range(256)) * (hashing.CHUNK_BYTES // 256 * 2 + 3)  # two chunks and a partial one
    path = tmp_path / "big.bin"
    path.write_bytes(payload)
    assert hashing.sha256_file(path) == hashlib.sha256(payload).hexdigest()
    assert hashing.sha256_file(str(path)) == hashlib.sha256(payload).hexdigest()


def test_one_implementation(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG not really")
    assert checkpoints.sha256_file is hashing.sha256_file
    data.clear_cache()
    assert data.file_sha256(path) == hashing.sha256_file(path)
