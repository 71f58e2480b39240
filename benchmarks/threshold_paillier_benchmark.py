"""Threshold vs single-key Paillier decryption of one round's secure sum, in one run.

Deals a threshold key (t = n // 2 + 1) and a phe key of the same size, encrypts a sum of
``--ciphertexts`` ciphertexts, and prints the time of: one holder's partial decryption
with its proof, verifying one partial, combining t partials (verifying each), and phe's
CRT decryption; then the ratios. See docs/threshold_paillier.md.

    python benchmarks/threshold_paillier_benchmark.py --clients 10 --ciphertexts 50
"""

from __future__ import annotations

import argparse
import time

from phe import generate_paillier_keypair

from flhet_strategies.privacy.paillier.threshold import deal_threshold_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--ciphertexts", type=int, default=50)
    parser.add_argument("--bits", type=int, default=2048)
    args = parser.parse_args()
    n, t, k = args.clients, args.clients // 2 + 1, args.ciphertexts

    start = time.perf_counter()
    public, shares = deal_threshold_key(n, t, args.bits, allow_short_keys=args.bits < 2048)
    deal = time.perf_counter() - start
    pk = public.public_key
    ciphertexts = [int(pk.encrypt(i * 1000 + 7).ciphertext()) for i in range(k)]

    start = time.perf_counter()
    partials = [s.partial_decrypt(ciphertexts) for s in shares[:t]]
    partial = (time.perf_counter() - start) / t
    start = time.perf_counter()
    assert public.verify(ciphertexts, partials[0])
    verify = time.perf_counter() - start
    start = time.perf_counter()
    plain = public.combine(ciphertexts, partials)
    combine = time.perf_counter() - start
    assert plain == [i * 1000 + 7 for i in range(k)]

    phe_public, phe_private = generate_paillier_keypair(n_length=args.bits)
    encrypted = [phe_public.encrypt(i) for i in range(k)]
    start = time.perf_counter()
    for e in encrypted:
        phe_private.raw_decrypt(e.ciphertext())
    crt = time.perf_counter() - start

    print(f"{args.bits}-bit key, n = {n} holders, t = {t}, {k} ciphertexts "
          f"(dealing: {deal:.1f} s)")
    print(f"  one holder's partial decryption + proof: {partial:.3f} s")
    print(f"  verify one partial:                      {verify:.3f} s")
    print(f"  combine t partials (verifying each):     {combine:.3f} s")
    print(f"  phe CRT decryption (single key):         {crt:.3f} s")
    print(f"  ratio partial / CRT: {partial / crt:.1f}x; combine / CRT: {combine / crt:.1f}x; "
          f"critical path (partial + combine) / CRT: {(partial + combine) / crt:.1f}x")


if __name__ == "__main__":
    main()
