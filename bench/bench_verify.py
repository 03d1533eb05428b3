"""bench_verify: what token verification costs, beside raw signature checks and JOSE libraries.

Measures, per algorithm (RS256, ES256, EdDSA), on this machine:

* cport cold: ``Verifier.verify`` on tokens it has never seen (every call misses the cache):
  strict parse, header checks, signature, claims, label mapping, cache insert. The tokens
  come from a population of holders who each present about 7 of them in the run (tokens are
  reissued; people are not), the same mix in quick and full runs. For the record, the same
  tokens from holders never seen before ("new holders": every label set built afresh);
* raw: ``cryptography``'s ``public_key.verify`` of the same signing input and signature bytes
  (prepared in advance: DER for ECDSA) — the physical floor for a verifier in Python;
* decode floor (for the record, not a target): what any Python verifier of a compact JWS pays
  before it checks anything — the SHA-256 cache key, splitting, base64 of payload and
  signature, ``json.loads`` of the payload (DER for ECDSA), then the same signature check;
* joserfc and PyJWT decoding the same tokens (claims checked the way each library does by
  default), for the record of why cport checks signatures with ``cryptography`` directly.

and the cached path: ``Verifier.verify`` of a token verified before, against a bare
``dict.get`` keyed by the same SHA-256 of the token (the cache's own key derivation).
Targets: cold ≤ 1.5× raw; cached ≤ 3× the dict floor. Raw, floor and cold are measured in
alternating rounds (best of each), so machine noise hits them alike. The last line is JSON.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import gc
import hashlib
import json
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from cport.identity import IssuerConfig, StaticKeySource, VerificationKey, Verifier

ISSUER = "https://idp.bench.example"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_key(alg: str) -> Any:
    if alg == "RS256":
        return rsa.generate_private_key(65537, 2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def sign(alg: str, key: Any, data: bytes) -> bytes:
    if alg == "RS256":
        return bytes(key.sign(data, padding.PKCS1v15(), hashes.SHA256()))
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return bytes(key.sign(data))


TOKENS_PER_HOLDER = 20 / 3  # 2,000 tokens from 300 holders


def holders_for(n: int) -> int:
    return max(1, round(n / TOKENS_PER_HOLDER))


def make_tokens(alg: str, key: Any, n: int, holders: int) -> list[str]:
    now = int(time.time())
    # Compact JSON, as issuers write it (Keycloak, Okta, Entra ID, Kubernetes, node
    # oidc-provider, PyJWT, joserfc); spaced JSON decodes on the same fast path.
    compact = (",", ":")
    header = b64(
        json.dumps({"alg": alg, "typ": "at+jwt", "kid": "k1"}, separators=compact).encode()
    )
    out = []
    for i in range(n):
        claims = {
            "iss": ISSUER,
            "aud": "cport",
            "sub": f"user{i % holders}",
            "exp": now + 3600,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "client_id": "app",
            "groups": ["dba", "dev"],
            "email": f"user{i % holders}@corp.example",
        }
        payload = b64(json.dumps(claims, separators=compact).encode())
        sig = sign(alg, key, f"{header}.{payload}".encode())
        out.append(f"{header}.{payload}.{b64(sig)}")
    return out


def raw_verifier(alg: str, key: Any, tokens: list[str]) -> Callable[[tuple[bytes, bytes]], None]:
    pub = key.public_key()
    if alg == "RS256":
        pad, h = padding.PKCS1v15(), hashes.SHA256()
        return lambda item: pub.verify(item[1], item[0], pad, h)
    if alg == "ES256":
        algo = ec.ECDSA(hashes.SHA256())
        return lambda item: pub.verify(item[1], item[0], algo)
    return lambda item: pub.verify(item[1], item[0])


def raw_items(alg: str, tokens: list[str]) -> list[tuple[bytes, bytes]]:
    items = []
    for tok in tokens:
        h, p, s = tok.split(".")
        sig = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
        if alg == "ES256":
            sig = encode_dss_signature(
                int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            )
        items.append((f"{h}.{p}".encode(), sig))
    return items


def floor_verifier(alg: str, key: Any) -> Callable[[str], None]:
    """The decode floor: cache key, split, base64, json.loads, signature — and no checks."""
    pub = key.public_key()
    to_std, pad = bytes.maketrans(b"-_", b"+/"), (b"", b"", b"==", b"=")
    rsa_pad, sha256 = padding.PKCS1v15(), hashes.SHA256()
    ecdsa = ec.ECDSA(hashes.SHA256())

    def verify(token: str) -> None:
        raw = token.encode()
        hashlib.sha256(raw).digest()
        h, p, s = raw.split(b".")
        json.loads(binascii.a2b_base64(p.translate(to_std) + pad[len(p) & 3]))
        sig = binascii.a2b_base64(s.translate(to_std) + pad[len(s) & 3])
        data = raw[: len(h) + 1 + len(p)]
        if alg == "RS256":
            pub.verify(sig, data, rsa_pad, sha256)
        elif alg == "ES256":
            r, s_ = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            pub.verify(encode_dss_signature(r, s_), data, ecdsa)
        else:
            pub.verify(sig, data)

    return verify


def per_item(fn: Callable[[Any], Any], items: list[Any], rounds: int) -> float:
    """Best-of-`rounds` microseconds per item, GC off."""
    best = float("inf")
    gc.disable()
    try:
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            for it in items:
                fn(it)
            best = min(best, (time.perf_counter_ns() - t0) / len(items) / 1000)
    finally:
        gc.enable()
    return best


def cold_vs_raw(
    alg: str, key: Any, tokens: list[str], fresh: list[str], rounds: int
) -> tuple[float, float, float, float]:
    """Best-of-`rounds` (raw, decode floor, cport cold, cport cold with `fresh` — the tokens
    of holders never seen), measured in alternating rounds."""
    issuer = IssuerConfig("corp", ISSUER, ("cport",), algorithms=(alg,))
    keys = StaticKeySource({"corp": [VerificationKey("k1", key.public_key())]})
    raw_fn, items = raw_verifier(alg, key, tokens), raw_items(alg, tokens)
    floor_fn = floor_verifier(alg, key)
    raw, floor, cold, new = [], [], [], []
    for _ in range(rounds):
        raw.append(per_item(raw_fn, items, 1))
        floor.append(per_item(floor_fn, tokens, 1))
        # a fresh verifier per round: every token is a cache miss
        v = Verifier([issuer], keys, cache_size=len(tokens) + 1)
        cold.append(per_item(v.verify, tokens, 1))
        v = Verifier([issuer], keys, cache_size=len(tokens) + 1)
        new.append(per_item(v.verify, fresh, 1))
    return min(raw), min(floor), min(cold), min(new)


def library_times(alg: str, key: Any, tokens: list[str], rounds: int) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        import jwt as pyjwt

        pub = key.public_key()
        opts = {"algorithms": [alg], "audience": "cport", "issuer": ISSUER}
        out["pyjwt"] = per_item(lambda t: pyjwt.decode(t, pub, **opts), tokens, rounds)
    except ImportError:
        pass
    try:
        from cryptography.hazmat.primitives import serialization
        from joserfc import jwt as jjwt
        from joserfc.jwk import ECKey, OKPKey, RSAKey

        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        jkey = {"RS256": RSAKey, "ES256": ECKey, "EdDSA": OKPKey}[alg].import_key(pem)
        reg = jjwt.JWTClaimsRegistry(
            iss={"essential": True, "value": ISSUER}, aud={"essential": True, "value": "cport"}
        )

        def jose(t: str) -> None:
            tok = jjwt.decode(t, jkey, algorithms=[alg])
            reg.validate(tok.claims)

        out["joserfc"] = per_item(jose, tokens, rounds)
    except ImportError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and rounds (< 1 min)")
    args = ap.parse_args()
    n, rounds = (400, 7) if args.quick else (2000, 9)
    print(
        f"bench_verify{' (quick)' if args.quick else ''}: {n} distinct tokens per algorithm "
        f"from {holders_for(n)} holders, best of {rounds}"
    )
    result: dict[str, Any] = {"bench": "verify", "cold_vs_raw": {}, "quick": args.quick}
    print(
        f"{'alg':<6} {'raw us':>8} {'floor x':>8} {'cport us':>9} {'x raw':>6} "
        f"{'new holders x':>14} {'pyjwt us':>9} {'joserfc us':>11}  target"
    )
    for alg in ("RS256", "ES256", "EdDSA"):
        key = make_key(alg)
        tokens = make_tokens(alg, key, n, holders_for(n))
        fresh = make_tokens(alg, key, n, n)
        raw, floor, cold, new = cold_vs_raw(alg, key, tokens, fresh, rounds)
        libs = library_times(alg, key, tokens, rounds)
        ratio = cold / raw
        result["cold_vs_raw"][alg] = round(ratio, 3)
        result["floor_vs_raw"] = {**result.get("floor_vs_raw", {}), alg: round(floor / raw, 3)}
        result["new_holders_vs_raw"] = {
            **result.get("new_holders_vs_raw", {}),
            alg: round(new / raw, 3),
        }
        result[f"{alg}_us"] = {
            "raw": round(raw, 2),
            "floor": round(floor, 2),
            "cport": round(cold, 2),
            "cport_new_holders": round(new, 2),
            **{k: round(v, 2) for k, v in libs.items()},
        }
        print(
            f"{alg:<6} {raw:>8.1f} {floor / raw:>8.2f} {cold:>9.1f} {ratio:>6.2f} "
            f"{new / raw:>14.2f} {libs.get('pyjwt', 0):>9.1f} {libs.get('joserfc', 0):>11.1f}"
            f"  <= 1.5x raw: {'met' if ratio <= 1.5 else 'MISSED'}"
        )
    # Cached path.
    key = make_key("ES256")
    tokens = make_tokens("ES256", key, 300, holders_for(300))
    issuer = IssuerConfig("corp", ISSUER, ("cport",))
    v = Verifier([issuer], StaticKeySource({"corp": [VerificationKey("k1", key.public_key())]}))
    now = time.time()
    for t in tokens:
        v.verify(t, now)
    floor_cache = {hashlib.sha256(t.encode()).digest(): t for t in tokens}
    items = tokens * 100
    samples_c, samples_f = [], []
    for _ in range(rounds + 2):  # alternate so machine noise hits both alike
        samples_c.append(per_item(lambda t: v.verify(t, now), items, 1))
        samples_f.append(
            per_item(lambda t: floor_cache.get(hashlib.sha256(t.encode()).digest()), items, 1)
        )
    cached, floor = min(samples_c), min(samples_f)
    ratio = cached / floor
    print(
        f"cached: cport {cached:.3f} us, dict floor {floor:.3f} us (same sha256 key): "
        f"{ratio:.2f}x  <= 3x: {'met' if ratio <= 3 else 'MISSED'}  "
        f"(median {statistics.median(samples_c):.3f} / {statistics.median(samples_f):.3f})"
    )
    result.update(
        {
            "cached_floor_ratio": round(ratio, 3),
            "cached_us": round(cached, 3),
            "floor_us": round(floor, 3),
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
