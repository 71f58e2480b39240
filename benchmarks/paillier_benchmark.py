"""Benchmark of the packed Paillier secure sum against one value per phe ciphertext.

Prints throughput and bytes per value of both, the randomness pool's effect, and the
server-side addition and decryption throughput, all from one run on one 2048-bit key.
Run ``python benchmarks/paillier_benchmark.py --quick``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from flhet_strategies.privacy.paillier import (
    CiphertextAggregator,
    KeyHolder,
    RandomnessPool,
    SecureSumCodec,
    SecureSumLayout,
)
from flhet_strategies.privacy.paillier.serialize import HEADER, ciphertext_bytes


def timed(function, *args):
    """Run ``function(*args)`` and return ``(result, seconds)``."""
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def naive_phe_rate(public_key, num_values: int, rng: np.random.Generator) -> float:
    """Values/second of phe encrypting one float per ciphertext."""
    values = rng.random(num_values)
    _, seconds = timed(lambda: [public_key.encrypt(float(v)) for v in values])
    return num_values / seconds


def packed_rate(holder: KeyHolder, vector: np.ndarray, clients: int, workers: int,
                pooled: bool, repeats: int = 5) -> tuple[float, float | None]:
    """Values/second of packed encryption, and obfuscators/second of the pool fill.

    Without the pool, one encryption computes its randomness (in ``workers`` processes);
    with it, the randomness for ``repeats`` encryptions is computed first (the fill
    rate) and the encryptions alone are timed.
    """
    with RandomnessPool(holder.public_key, workers=workers) as pool:
        codec = SecureSumCodec(holder.public_key, vector.size, clients, randomness=pool)
        if workers > 1:
            pool.fill(workers)  # start the worker processes outside the timing
            pool.take(workers)
        if not pooled:
            _, seconds = timed(codec.encrypt, vector)
            return vector.size / seconds, None
        _, seconds = timed(codec.precompute, repeats)
        fill_rate = repeats * codec.num_ciphertexts / seconds
        _, seconds = timed(lambda: [codec.encrypt(vector) for _ in range(repeats)])
    return repeats * vector.size / seconds, fill_rate


def bytes_per_value(holder: KeyHolder, num_values: int, clients: int, value_range, bits) -> float:
    """Serialized payload bytes per value for a layout."""
    layout = SecureSumLayout(num_values, clients, value_range[0], value_range[1], bits,
                             holder.public_key.n.bit_length() - 1)
    total = HEADER.size + layout.num_ciphertexts * ciphertext_bytes(holder.public_key)
    return total / num_values


def main() -> None:
    """Parse the arguments, run every measurement on one key and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--clients", type=int, default=10, help="max summands (clients)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    num_values = 5_000 if args.quick else 20_000  # e.g. 500 / 2000 proxy samples x 10 classes
    naive_values = 30 if args.quick else 100
    rng = np.random.default_rng(args.seed)
    holder, seconds = timed(KeyHolder.generate)
    public_key = holder.public_key
    print(f"2048-bit key generated in {seconds:.2f} s")

    probabilities = rng.dirichlet(np.ones(10), size=num_values // 10).ravel()
    codec = SecureSumCodec(public_key, probabilities.size, args.clients, workers=1)
    layout = codec.layout
    print(
        f"layout: {probabilities.size} values, 8-bit in [0, 1], up to {args.clients} "
        f"summands -> {layout.slot_bits}-bit slots, {layout.slots_per_ciphertext} values "
        f"per ciphertext, {codec.num_ciphertexts} ciphertexts"
    )

    print("\n== throughput (values/second) ==")
    naive = naive_phe_rate(public_key, naive_values, rng)
    print(f"phe, one value per ciphertext          {naive:12,.0f}")
    rates = {}
    for workers in (1, 2):
        for pooled in (False, True):
            rate, fill = packed_rate(holder, probabilities, args.clients, workers, pooled)
            rates[workers, pooled] = rate
            label = f"packed, {workers} worker{'s' if workers > 1 else ' '}, " + (
                "precomputed pool" if pooled else "no pool        "
            )
            extra = f"   (pool fill: {fill:,.0f} r^n/s)" if fill else ""
            print(f"{label} {rate:12,.0f}  = {rate / naive:8,.0f}x phe{extra}")
    print(f"2 vs 1 worker, no pool: {rates[2, False] / rates[1, False]:.2f}x;  "
          f"precomputed pool vs no pool (1 worker): {rates[1, True] / rates[1, False]:,.0f}x")

    print("\n== bytes per value (float32: 4) ==")
    phe_bytes = ciphertext_bytes(public_key)
    print(f"phe, one value per ciphertext          {phe_bytes:8.2f}  "
          f"({phe_bytes / 4:.0f}x float32)")
    for value_range, bits, label in [((0.0, 1.0), 8, "packed 8-bit probabilities"),
                                     ((-1.0, 1.0), 16, "packed 16-bit signed floats")]:
        per_value = bytes_per_value(holder, probabilities.size, args.clients, value_range, bits)
        print(f"{label:38s} {per_value:8.2f}  ({per_value / 4:.2f}x float32)")

    print("\n== server sum and decryption ==")
    codec.precompute(args.clients)
    vectors = [rng.dirichlet(np.ones(10), size=num_values // 10).ravel()
               for _ in range(args.clients)]
    arrays = [codec.encrypt(vector).to_array() for vector in vectors]
    aggregator = CiphertextAggregator(public_key)
    _, seconds = timed(aggregator.add, *arrays)
    additions = (args.clients - 1) * codec.num_ciphertexts
    print(f"deserialize + add {args.clients} payloads: {seconds * 1e3:.1f} ms "
          f"({additions / seconds:,.0f} ciphertext additions/s incl. checks)")
    total, seconds = timed(holder.decrypt_sum, aggregator.result())
    print(f"decrypt + decode the sum: {seconds:.2f} s ({total.size / seconds:,.0f} values/s, "
          f"{codec.num_ciphertexts / seconds:,.0f} ciphertexts/s)")
    error = float(np.max(np.abs(total - np.sum(vectors, axis=0))))
    print(f"max |decrypted - plaintext sum| = {error:.5f} <= bound "
          f"{codec.max_sum_error(args.clients):.5f}: {error <= codec.max_sum_error(args.clients)}")


if __name__ == "__main__":
    main()
