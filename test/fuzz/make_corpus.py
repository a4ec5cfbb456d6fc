#!/usr/bin/env python3
"""Writes the seed corpora of the libFuzzer targets from test/unit/vectors/format-v1.json.

corpus/fuzz_ciphertext/: each input is ciphertext || context || len(context) (one byte), the
layout fuzz_ciphertext.cpp reads: every vector of the format, truncations at each field
boundary, and each header field altered, for a GCM and a SIV value; blind index values
(header 01 03 || a prefix of a blind_index vector's HMAC, with the indexed value as the
context) of every length class: 1, 8, 16, 31 and 32 bytes, and the refused 0 and 33.
corpus/fuzz_key_material/: dek_len || dek || stored check value || be32 key id || be32
version, with the true check value (computed here with the standard library) and DEKs of
wrong lengths.

Run it again after the vectors change; the files are committed."""
import hashlib
import hmac
import json
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "unit", "vectors", "format-v1.json")


def hkdf_sha256(key, info, length):
    """HKDF-SHA-256 with no salt (RFC 5869), as pgkm derives its working keys."""
    prk = hmac.new(b"\0" * 32, key, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def key_check(dek, key_id, version):
    """The key check value stored beside a wrapped DEK."""
    check_key = hkdf_sha256(dek, b"pgkm/v1/key-check", 32)
    return hmac.new(check_key, struct.pack(">II", key_id, version), hashlib.sha256).digest()


def write(directory, name, data):
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def ciphertext_seed(ct, ctx):
    ctx = ctx[:255]
    return ct + ctx + bytes([len(ctx)])


def main():
    with open(VECTORS) as f:
        doc = json.load(f)
    ct_dir = os.path.join(HERE, "corpus", "fuzz_ciphertext")
    km_dir = os.path.join(HERE, "corpus", "fuzz_key_material")
    for d in (ct_dir, km_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)

    for v in doc["vectors"]:
        ct = bytes.fromhex(v["ciphertext"])
        ctx = bytes.fromhex(v["context"]) if v.get("context") else b""
        write(ct_dir, "vector-" + v["name"], ciphertext_seed(ct, ctx))

    base = {v["name"]: v for v in doc["vectors"]}["gcm-ssn-ctx"]
    ct = bytes.fromhex(base["ciphertext"])
    ctx = bytes.fromhex(base["context"])
    for n in (0, 1, 2, 6, 9, 10, 11, 21, 22, 25, 26, 37, 38, len(ct) - 1):
        write(ct_dir, "truncated-%02d" % n, ciphertext_seed(ct[:n], ctx))
    altered = {
        "format-00": (0, b"\x00"),
        "format-02": (0, b"\x02"),
        "format-ff": (0, b"\xff"),
        "algorithm-00": (1, b"\x00"),
        "algorithm-02": (1, b"\x02"),
        "algorithm-03": (1, b"\x03"),
        "algorithm-ff": (1, b"\xff"),
        "key-id-0": (2, b"\x00\x00\x00\x00"),
        "key-id-max": (2, b"\xff\xff\xff\xff"),
        "version-0": (6, b"\x00\x00\x00\x00"),
        "version-max": (6, b"\xff\xff\xff\xff"),
    }
    for name, (offset, value) in altered.items():
        bad = ct[:offset] + value + ct[offset + len(value):]
        write(ct_dir, "altered-" + name, ciphertext_seed(bad, ctx))
    write(ct_dir, "context-wrong", ciphertext_seed(ct, b"38"))
    write(ct_dir, "context-missing", ciphertext_seed(ct, b""))
    write(ct_dir, "empty", b"")

    # AES-256-SIV: siv-email opens under the fuzzer's fixed DEK.
    siv = {v["name"]: v for v in doc["vectors"]}["siv-email"]
    ct = bytes.fromhex(siv["ciphertext"])
    for n in (0, 2, 9, 10, 11, 25, 26, 27, len(ct) - 1):
        write(ct_dir, "siv-truncated-%02d" % n, ciphertext_seed(ct[:n], b""))
    for name, (offset, value) in altered.items():
        bad = ct[:offset] + value + ct[offset + len(value):]
        write(ct_dir, "siv-altered-" + name, ciphertext_seed(bad, b""))
    write(ct_dir, "siv-algorithm-01", ciphertext_seed(ct[:1] + b"\x01" + ct[2:], b""))
    write(ct_dir, "siv-iv-flipped", ciphertext_seed(ct[:12] + bytes([ct[12] ^ 0x80]) + ct[13:], b""))
    write(ct_dir, "siv-context-wrong", ciphertext_seed(ct, b"x"))
    write(ct_dir, "siv-plus-byte", ciphertext_seed(ct + b"\x00", b""))

    # Blind index values under the fixed DEK: the context is the value indexed, so the
    # fuzzer's recomputation matches these seeds.
    for v in doc["blind_index"]:
        if v["dek"] != siv["dek"]:
            continue
        mac = bytes.fromhex(v["hmac_sha256"])
        value = bytes.fromhex(v["plaintext"])
        header = b"\x01\x03" + struct.pack(">II", 5, 1)
        for n in (0, 1, 8, 16, 31, 32, 33):
            tail = (mac + b"\x00")[:n]
            write(ct_dir, "%s-%02d" % (v["name"], n), ciphertext_seed(header + tail, value))
        write(ct_dir, v["name"] + "-other-value", ciphertext_seed(header + mac[:8], value + b"!"))

    for v in doc["vectors"][:3]:
        dek = bytes.fromhex(v["dek"])
        kid, ver = v["key_id"], v["key_version"]
        ident = struct.pack(">II", kid, ver)
        write(km_dir, "check-" + v["name"], bytes([32]) + dek + key_check(dek, kid, ver) + ident)
        write(km_dir, "check-wrong-" + v["name"], bytes([32]) + dek + bytes(32) + ident)
    dek = bytes.fromhex(doc["vectors"][0]["dek"])
    ident = struct.pack(">II", 1, 1)
    for n in (0, 1, 16, 31, 33, 64):
        body = (dek * 3)[:n]
        write(km_dir, "dek-length-%02d" % n, bytes([n]) + body + key_check(dek, 1, 1) + ident)
    return 0


if __name__ == "__main__":
    sys.exit(main())
