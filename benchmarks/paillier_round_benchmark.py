"""End-to-end round time of logit-consensus distillation with vs without Paillier, in one run.

Runs the same federation in Flower's simulation engine in plaintext and through a
Paillier secure sum, and prints round times, their ratio, bytes per round and the final
accuracies of both. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from clients.faces.client_app import flhet_client_app
from clients.faces.state import client_id_from_context
from clients.mods import PaillierMod
from flhet_strategies import wire
from flhet_strategies.aggregation.weighted_sum import client_weights
from flhet_strategies.algorithms.consensus import SUM_RULE
from flhet_strategies.privacy.paillier import (
    CiphertextAggregator,
    EncryptedVector,
    RandomnessPool,
    SecureSumCodec,
    ShortExponentObfuscators,
    deal_keys,
    deal_threshold_keys,
    load_key_holder,
    load_public_key,
    load_threshold_cohort,
    load_threshold_holder,
)
from flhet_strategies.privacy.paillier.secure_sum import DECRYPTION_MODES
from flhet_strategies.privacy.paillier.threshold_keys import PUBLIC_FILE as THRESHOLD_PUBLIC
from flhet_strategies.strategies import FedConsensus, SecureConsensus
from simulations.config import ExperimentConfig, from_dict
from simulations.experiment import backend_config, build_client, build_split


def experiment(quick: bool, rounds: int | None, clients: int | None,
               proxy_per_round: int | None) -> ExperimentConfig:
    """The benchmark's federation (see docs/benchmarks.md)."""
    if quick:
        num_clients = clients or 4
        data = {"dataset": "digits", "num_clients": num_clients,
                "partitioner": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 40},
                "proxy_size": 300, "proxy_validation_size": 100}
        per_round = proxy_per_round or 120
    else:
        num_clients = clients or 10
        data = {"dataset": "fashion_mnist", "num_clients": num_clients,
                "partitioner": {"name": "dirichlet", "alpha": 0.1},
                "proxy_size": 5000, "proxy_validation_size": 1000, "private_size": 20000,
                "global_test_size": 2000}
        per_round = proxy_per_round or 2000
    cnn = (num_clients + 1) // 2
    return from_dict({
        "name": "paillier-round-benchmark", "seed": 0,
        "num_rounds": rounds or (3 if quick else 5), "api": "message",
        "data": data,
        "strategy": {"proxy_per_round": per_round},
        "recipe": {"warmup_epochs": 1, "local_epochs": 1, "kd_weight": 0.5,
                   "final_private_epochs": 0},
        "simulation": {"num_cpus": 2, "cpus_per_client": 1.0, "threads_per_client": 1},
        "clients": [{"architecture": "cnn_small", "count": cnn, "lr": 0.05},
                    {"architecture": "mlp", "count": num_clients - cnn, "lr": 0.05}],
    })


def run_federation(cfg: ExperimentConfig, key_dir: Path | None, secure_options: dict) -> dict:
    """Run one federation; ``key_dir`` set means Paillier. Returns history and timings.

    ``secure_options`` go to :class:`SecureConsensus` (bits, decryption mode); with
    ``decryption="threshold"`` the folder holds a threshold cohort's files (each client's
    mod picks its own share by partition id).
    """
    import torch
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    split = build_split(cfg)
    inner = FedConsensus(num_proxy=len(split.proxy_x), num_classes=split.num_classes,
                         proxy_per_round=cfg.strategy.proxy_per_round,
                         consensus=cfg.strategy.consensus(), recipe=cfg.recipe, seed=cfg.seed,
                         min_available_nodes=cfg.data.num_clients)
    mods = []
    strategy = inner
    if key_dir is not None:
        max_examples = max(len(client.train) for client in split.clients)
        if secure_options["decryption"] == "threshold":
            key, key_path = load_threshold_cohort(key_dir / THRESHOLD_PUBLIC), key_dir
        else:
            key = load_public_key(key_dir / "paillier_public.bin")
            key_path = key_dir / "paillier_private.json"
        strategy = SecureConsensus(inner, key, max_examples=max_examples, **secure_options)
        mods = [PaillierMod(key_path)]
    timing: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context):
        start = time.perf_counter()
        strategy.start(grid=grid, num_rounds=cfg.num_rounds)
        timing["start_seconds"] = time.perf_counter() - start

    def factory(context):
        torch.set_num_threads(cfg.simulation.threads_per_client)
        return build_client(cfg, client_id_from_context(context))

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(server_app=server_app,
                   client_app=flhet_client_app(factory, mods=mods),
                   num_supernodes=cfg.data.num_clients, backend_config=backend_config(cfg))
    return {"history": strategy.history, **timing}


def crypto_costs(key_dir: Path, cfg: ExperimentConfig, secure_options: dict) -> dict:
    """Per-client seconds of one share's encryption and one sum's decryption, in this process
    (threshold key: one partial decryption with its proof, and combining ``t`` of them)."""
    threshold = secure_options["decryption"] == "threshold"
    holder = load_threshold_holder(key_dir / "paillier_share_0.json") if threshold else \
        load_key_holder(key_dir / "paillier_private.json")
    split = build_split(cfg)
    inner = FedConsensus(num_proxy=len(split.proxy_x), num_classes=split.num_classes,
                         proxy_per_round=cfg.strategy.proxy_per_round,
                         consensus=cfg.strategy.consensus())
    strategy = SecureConsensus(inner, holder.cohort if threshold else holder.public_key,
                               max_examples=max(len(c.train) for c in split.clients),
                               **secure_options)
    spec = strategy.algorithm.spec(1, cfg.data.num_clients)
    layout = spec.sum_layout
    rows, classes = layout.terms[0].shape
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(rows, classes)).astype(np.float32)
    counts = np.full(classes, 50)
    values = SUM_RULE.terms(layout, {wire.LOGITS: logits}, {})
    weights = {t.name: client_weights(layout, t, counts, int(counts.sum())) for t in layout.terms}
    vector, _ = spec.encode(values, weights)
    value_range = (0.0, float((1 << spec.value_bits) - 1))
    costs = {"ciphertexts": spec.layout(holder.public_key.n.bit_length() - 1).num_ciphertexts,
             "values": spec.num_values, "value_bits": spec.value_bits}
    for name, source in (("r^n", None), ("djn", ShortExponentObfuscators(holder.public_key))):
        with RandomnessPool(holder.public_key, workers=1, source=source) as pool:
            codec = SecureSumCodec(holder.public_key, spec.num_values, spec.max_summands,
                                   value_range, spec.value_bits, randomness=pool)
            start = time.perf_counter()
            codec.precompute(1)
            costs[f"randomness_{name}"] = time.perf_counter() - start
            start = time.perf_counter()
            share = codec.encrypt(vector)
            costs["encrypt_with_pool"] = time.perf_counter() - start
    encrypted_sum = CiphertextAggregator(holder.public_key).add(
        *[share] * 1).result().to_array()
    if threshold:
        costs.update(threshold_costs(key_dir, holder, share))
    for workers in (() if threshold else (1, 2)):
        start = time.perf_counter()
        received = EncryptedVector.from_array(encrypted_sum, holder.public_key)
        spec.decode(holder.decrypt_sum(received, workers=workers), received.num_summands)
        costs[f"decrypt_and_decode_{workers}"] = time.perf_counter() - start
    costs["share_bytes"] = share.nbytes
    costs["float32_bytes"] = rows * classes * 4 + classes * 8
    return costs


def threshold_costs(key_dir: Path, holder, share) -> dict:
    """Seconds of one partial decryption (with proof), and of verifying and combining t."""
    cohort = holder.cohort
    holders = [load_threshold_holder(key_dir / f"paillier_share_{cid}.json")
               for cid in sorted(cohort.roster, key=int)[:cohort.threshold]]
    ciphertexts = [int(c) for c in share.ciphertexts]
    start = time.perf_counter()
    partials = [h.partial_decrypt(ciphertexts) for h in holders]
    partial = (time.perf_counter() - start) / len(holders)
    start = time.perf_counter()
    cohort.key.combine(ciphertexts, partials)
    return {"partial_decrypt": partial, "combine_t": time.perf_counter() - start,
            "threshold": cohort.threshold}


def _round_seconds(history: list[dict]) -> list[float]:
    return [float(entry["seconds"]) for entry in sorted(history, key=lambda e: e["round"])]


def _final(history: list[dict], key: str) -> float:
    return float(sorted(history, key=lambda e: e["round"])[-1][key])


def _last_mean(history: list[dict], key: str, count: int) -> float:
    entries = sorted(history, key=lambda e: e["round"])[-count:]
    return float(np.mean([entry[key] for entry in entries]))


def main() -> None:
    """Run both federations and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits, 4 clients, 3 rounds")
    parser.add_argument("--rounds", type=int, help="rounds per federation")
    parser.add_argument("--clients", type=int, help="number of clients")
    parser.add_argument("--proxy-per-round", type=int, help="proxy samples per round")
    parser.add_argument("--repeats", type=int, default=1, choices=(1, 2),
                        help="2: plaintext, paillier, paillier, plaintext (ABBA)")
    parser.add_argument("--probability-bits", type=int, default=8)
    parser.add_argument("--vote-bits", type=int, default=16)
    parser.add_argument("--decryption", default="delegate", choices=DECRYPTION_MODES,
                        help="one client decrypts for the cohort, every client, or t of n "
                             "threshold key shares")
    parser.add_argument("--decryptors", type=int,
                        help="threshold: clients asked for a partial decryption (default t+1)")
    args = parser.parse_args()
    secure_options = {"probability_bits": args.probability_bits, "vote_bits": args.vote_bits,
                      "decryption": args.decryption}
    if args.decryptors is not None:
        secure_options["decryptors"] = args.decryptors
    cfg = experiment(args.quick, args.rounds, args.clients, args.proxy_per_round)
    build_split(cfg)  # load data once, before timing
    print(f"measured at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} on "
          f"{os.cpu_count()} CPUs; {cfg.data.dataset}, {cfg.data.num_clients} clients "
          f"(cnn_small/mlp), {cfg.strategy.proxy_per_round} proxy samples a round, "
          f"{cfg.num_rounds} rounds; paillier: {secure_options}")
    with tempfile.TemporaryDirectory() as tmp:
        key_dir = Path(tmp)
        if args.decryption == "threshold":   # t = n // 2 + 1 key shares decrypt
            files = deal_threshold_keys(key_dir, [str(c) for c in range(cfg.data.num_clients)])
            print(f"key dealer wrote {len(files.share_paths)} share files (one per client) "
                  f"and {files.public_path.name} (server), key {files.fingerprint}")
        else:
            files = deal_keys(key_dir)   # the key dealer: server gets the public file only
            print(f"key dealer wrote {files.private_path.name} (clients) and "
                  f"{files.public_path.name} (server), key {files.fingerprint}")
        order = ["plaintext", "paillier"] if args.repeats == 1 else \
            ["plaintext", "paillier", "paillier", "plaintext"]
        runs: dict[str, list[dict]] = {"plaintext": [], "paillier": []}
        for name in order:
            runs[name].append(run_federation(cfg, key_dir if name == "paillier" else None,
                                             secure_options))
        costs = crypto_costs(key_dir, cfg, secure_options)

    print("\nseconds per round (configure, train, aggregate, evaluate):")
    means, medians = {}, {}
    for name, results in runs.items():
        later = [s for r in results for s in _round_seconds(r["history"])[1:]]
        means[name], medians[name] = float(np.mean(later)), float(np.median(later))
        for r in results:
            rounds = ", ".join(f"{s:.2f}" for s in _round_seconds(r["history"]))
            print(f"  {name:9s}: [{rounds}]  strategy.start {r['start_seconds']:.1f} s")
    start_ratio = (np.mean([r["start_seconds"] for r in runs["paillier"]])
                   / np.mean([r["start_seconds"] for r in runs["plaintext"]]))
    print(f"round time, rounds 2..{cfg.num_rounds}: plaintext mean {means['plaintext']:.2f} s "
          f"(median {medians['plaintext']:.2f}), paillier mean {means['paillier']:.2f} s "
          f"(median {medians['paillier']:.2f})")
    print(f"RATIO paillier / plaintext round time: {means['paillier'] / means['plaintext']:.3f} "
          f"(medians {medians['paillier'] / medians['plaintext']:.3f}; target <= 1.5, aim 1.10); "
          f"whole run (strategy.start): {start_ratio:.3f}")
    plain, secure = runs["plaintext"][0]["history"], runs["paillier"][0]["history"]
    for name, history in (("plaintext", plain), ("paillier", secure)):
        entry = sorted(history, key=lambda e: e["round"])[-1]
        print(f"  {name:9s}: bytes up {entry['bytes_up'] / 1024:.1f} KiB, down "
              f"{entry['bytes_down'] / 1024:.1f} KiB (last round)")
    print("\nfinal accuracy (fractions):")
    for key in ("global_accuracy_mean", "client_accuracy_mean"):
        a, b = _final(plain, key), _final(secure, key)
        verdict = "agree" if abs(a - b) <= 0.01 else "DIFFER"
        last = min(3, cfg.num_rounds)
        mean_a, mean_b = _last_mean(plain, key, last), _last_mean(secure, key, last)
        print(f"  {key}: plaintext {a:.4f}, paillier {b:.4f}, difference "
              f"{100 * (b - a):+.2f} points ({verdict} within 1 point); mean of the last "
              f"{last} rounds {mean_a:.4f} vs {mean_b:.4f} ({100 * (mean_b - mean_a):+.2f})")
    print(f"\nper-client crypto for this setting ({costs['values']} values of "
          f"{costs['value_bits']} bits -> {costs['ciphertexts']} ciphertexts, "
          f"{costs['share_bytes'] / 1024:.1f} KiB vs {costs['float32_bytes'] / 1024:.1f} KiB "
          "plaintext):")
    print(f"  randomness r^n {costs['randomness_r^n']:.3f} s, DJN short exponent "
          f"{costs['randomness_djn']:.3f} s (precomputed while training); encrypt with it "
          f"{costs['encrypt_with_pool']:.3f} s")
    if "partial_decrypt" in costs:
        print(f"  threshold: one partial decryption with its proof {costs['partial_decrypt']:.3f} s"
              f"; verify and combine t = {costs['threshold']} partials "
              f"{costs['combine_t']:.3f} s (every client, before training)")
    else:
        print(f"  decrypt + decode the sum {costs['decrypt_and_decode_1']:.3f} s (1 thread), "
              f"{costs['decrypt_and_decode_2']:.3f} s (2 threads)")


if __name__ == "__main__":
    main()
