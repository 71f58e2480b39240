"""Checkpoint and resume: a run killed after a round and resumed ends as the unbroken run.

Both faces, every algorithm: the server writes its round state after every finished
round, the nodes theirs after every training round; a fresh strategy (and fresh nodes,
as after a machine restart) resumes from those files and must reach the same arrays and
history, bit for bit, as the run that was never interrupted.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.common import parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.server import Server
from inprocess_proxy import InProcessProxy
from test_face_parity import (
    CASES,
    NODES,
    NUM_CLIENTS,
    LocalGrid,
    comparable,
    make_client,
    task_identity,  # noqa: F401  (the fixture)
    transported,
)
from uuid import uuid4

from clients.faces.client_app import flhet_client_app
from clients.faces.numpy_client import FlhetNumPyClient
from clients.faces.state import restore_client, save_client
from clients.faces.wrappers import PaillierMod
from flhet_strategies import wire
from flhet_strategies.faces.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from flhet_strategies.faces.driver import RoundDriver
from flhet_strategies.privacy.paillier import KeyHolder
from flhet_strategies.strategies import FedConsensus, FedProto, SecureConsensus
from simulations import cli
from simulations.config import load_config
from simulations.reporting import validate_results, write_report
from simulations.runner import ResumeError, _open_checkpoint

ROUNDS = 3


class Crash(RuntimeError):
    """The process dies."""


class CrashingGrid(LocalGrid):
    """In-process nodes that write their state to ``folder``; the run dies once
    ``crash_after`` training replies of round ``crash_round`` are in."""

    def __init__(self, make, folder, crash_round=None, crash_after=0, contexts=None,
                 mods=None):
        super().__init__(make)
        self.app = flhet_client_app(lambda context: make(NODES.index(context.node_id)),
                                    mods=mods, checkpoint_dir=folder)
        if contexts is not None:
            self.contexts = contexts
        self.crash_round, self.crash_after = crash_round, crash_after

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            content = msg.content.config_records.get("config", {})
            is_train = msg.metadata.message_type == "train"
            if (is_train and content.get(wire.SERVER_ROUND) == self.crash_round
                    and len(replies) == self.crash_after):
                raise Crash(f"killed in round {self.crash_round}")
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            node = msg.metadata.dst_node_id
            replies.append(transported(self.app(transported(msg), self.contexts[node])))
        return replies


def _message(case, ckpt=None):
    message_type, _, options, _ = CASES[case]
    return message_type(**options, min_available_nodes=NUM_CLIENTS, checkpoint=ckpt)


def _arrays(result):
    return [a.numpy() for a in result.arrays.values()]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("restart_nodes", [True, False])
def test_message_face_resumes_to_the_unbroken_run(case, restart_nodes, tmp_path):
    feature_dim = CASES[case][3]
    make = lambda cid: make_client(cid, feature_dim)  # noqa: E731
    unbroken = _message(case)
    reference = _arrays(unbroken.start(grid=LocalGrid(make), num_rounds=ROUNDS))

    ckpt, nodes = tmp_path / "server.pkl", tmp_path / "nodes"
    first = _message(case, ckpt)
    grid = CrashingGrid(make, nodes, crash_round=3, crash_after=1)   # node 11 trained round 3
    with pytest.raises(Crash):
        first.start(grid=grid, num_rounds=ROUNDS)
    assert load_checkpoint(ckpt).history.rounds[-1]["round"] == 2

    second = _message(case, ckpt)
    assert second.resume() is True and second.driver.offset == 2
    contexts = None if restart_nodes else grid.contexts   # restarted machines or live nodes
    result = second.start(grid=CrashingGrid(make, nodes, contexts=contexts), num_rounds=ROUNDS)
    assert [e["round"] for e in second.history] == [1, 2, 3]
    assert comparable(second.history) == comparable(unbroken.history)
    for a, b in zip(_arrays(result), reference, strict=True):
        np.testing.assert_array_equal(a, b)


def test_secure_sum_resumes_to_the_unbroken_run(tmp_path):
    """Paillier (delegated decryption): the pending encrypted sum survives the restart."""
    make = lambda cid: make_client(cid, None)  # noqa: E731
    holder = KeyHolder.generate()
    mods = [PaillierMod(key_holder=holder)]

    def secure(ckpt=None):
        return SecureConsensus(_message("consensus", ckpt), holder.public_key, max_examples=64)

    unbroken = secure()
    unbroken.start(grid=CrashingGrid(make, None, mods=mods), num_rounds=ROUNDS)
    ckpt = tmp_path / "server.pkl"
    with pytest.raises(Crash):
        secure(ckpt).start(grid=CrashingGrid(make, tmp_path / "n", crash_round=3, mods=mods),
                           num_rounds=ROUNDS)
    second = secure(ckpt)
    assert second.resume()
    second.start(grid=CrashingGrid(make, tmp_path / "n", mods=mods), num_rounds=ROUNDS)
    assert [e["sum_decryption"] for e in second.history] == [None, "delegated", "delegated"]
    assert comparable(second.history) == comparable(unbroken.history)


def _compat_run(case, make, rounds, ckpt=None, folder=None, resume=False, crash_after=None):
    _, compat_type, options, _ = CASES[case]
    strategy = compat_type(**options, num_rounds=ROUNDS, min_available_clients=NUM_CLIENTS,
                           checkpoint=ckpt)
    if resume:
        assert strategy.resume()
    if crash_after is not None:
        def die(driver, server_round):
            if server_round == crash_after:
                raise Crash(server_round)
        strategy.driver.on_round_end = die
    manager = SimpleClientManager()
    for cid in range(NUM_CLIENTS):
        context = Context(run_id=1, node_id=NODES[cid], node_config={"partition-id": cid},
                          state=RecordDict(), run_config={})
        manager.register(InProcessProxy(str(NODES[cid]), FlhetNumPyClient(
            make(cid), cid, context, checkpoint_dir=folder)))
    server = Server(client_manager=manager, strategy=strategy)
    server.fit(strategy.remaining_rounds if rounds is None else rounds, timeout=None)
    return strategy, parameters_to_ndarrays(server.parameters)


@pytest.mark.parametrize("case", ["consensus", "consensus-central-dp", "fedtgp", "lgfedavg"])
def test_compat_face_resumes_to_the_unbroken_run(case, tmp_path):
    feature_dim = CASES[case][3]
    make = lambda cid: make_client(cid, feature_dim)  # noqa: E731
    unbroken, reference = _compat_run(case, make, ROUNDS)
    ckpt, folder = tmp_path / "server.pkl", tmp_path / "nodes"
    with pytest.raises(Crash):
        _compat_run(case, make, ROUNDS, ckpt, folder, crash_after=2)
    resumed, arrays = _compat_run(case, make, None, ckpt, folder, resume=True)
    assert resumed.remaining_rounds == 1
    assert comparable(resumed.history) == comparable(unbroken.history)
    for a, b in zip(arrays, reference, strict=True):
        np.testing.assert_array_equal(a, b)


def test_resume_is_checked_against_the_failure_it_should_catch(tmp_path):
    """Without the nodes' saved state the resumed run diverges (the test can fail)."""
    make = lambda cid: make_client(cid, None)  # noqa: E731
    unbroken = _message("consensus")
    unbroken.start(grid=LocalGrid(make), num_rounds=ROUNDS)
    ckpt = tmp_path / "server.pkl"
    with pytest.raises(Crash):
        _message("consensus", ckpt).start(
            grid=CrashingGrid(make, tmp_path / "nodes", crash_round=3), num_rounds=ROUNDS)
    second = _message("consensus", ckpt)
    second.resume()
    second.start(grid=CrashingGrid(make, tmp_path / "elsewhere"), num_rounds=ROUNDS)
    assert comparable(second.history) != comparable(unbroken.history)


def test_every_round_is_checkpointed_also_without_evaluation(tmp_path):
    make = lambda cid: make_client(cid, None)  # noqa: E731
    message_type, _, options, _ = CASES["consensus"]
    strategy = message_type(**options, min_available_nodes=NUM_CLIENTS, evaluate_every=2,
                            checkpoint=tmp_path / "s.pkl")
    ended = []
    strategy.driver.on_round_end = lambda driver, r: ended.append(
        (r, load_checkpoint(tmp_path / "s.pkl").history.rounds[-1]["round"]))
    strategy.start(grid=LocalGrid(make), num_rounds=ROUNDS)
    assert ended == [(1, 1), (2, 2), (3, 3)]
    assert [e.get("client_accuracy_mean") is None for e in strategy.history] == \
        [True, False, False]


def test_bad_checkpoints_are_refused(tmp_path):
    strategy = FedConsensus(num_proxy=60, num_classes=4, checkpoint=tmp_path / "missing.pkl")
    assert strategy.resume() is False                       # nothing to resume: fresh run
    with pytest.raises(ValueError, match="needs a checkpoint"):
        FedConsensus(num_proxy=60, num_classes=4).resume()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pkl")
    save_checkpoint(strategy.driver, tmp_path / "ok.pkl")
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes((tmp_path / "ok.pkl").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(truncated)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"format": 99, "driver": strategy.driver}))
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(other)
    proto = FedProto(num_classes=4, feature_dim=8)
    with pytest.raises(ValueError, match="holds"):
        proto.resume(tmp_path / "ok.pkl")
    assert isinstance(RoundDriver.resume(tmp_path / "ok.pkl"), RoundDriver)


def test_nodes_keep_two_rounds_on_disk_and_restore_the_asked_one(tmp_path):
    client = make_client(0, None)
    context = Context(run_id=1, node_id=11, node_config={"partition-id": 0},
                      state=RecordDict(), run_config={})
    states = {}
    for r in (1, 2, 3):
        client.learner.train(client.x_train, client.y_train, epochs=1)
        client.state = {"round": np.array([r])}
        save_client(client, context, "main", directory=tmp_path, server_round=r)
        states[r] = {k: v.copy() for k, v in client.learner.get_state().items()}
    assert sorted(p.name for p in (tmp_path / "main").iterdir()) == \
        ["client-0.r000002.npz", "client-0.r000003.npz"]
    fresh = make_client(0, None)
    empty = Context(run_id=1, node_id=11, node_config={"partition-id": 0},
                    state=RecordDict(), run_config={})
    assert restore_client(fresh, empty, "main", directory=tmp_path, up_to_round=2)
    assert int(fresh.state["round"][0]) == 2
    for k, v in fresh.learner.get_state().items():
        np.testing.assert_array_equal(v, states[2][k])
    # a live node whose memory is past the round asked for reads the disk instead
    assert restore_client(fresh, context, "main", directory=tmp_path, up_to_round=2)
    assert int(fresh.state["round"][0]) == 2
    assert restore_client(fresh, context, "main", directory=tmp_path, up_to_round=3)
    assert int(fresh.state["round"][0]) == 3
    assert not restore_client(fresh, empty, "other-phase", directory=tmp_path, up_to_round=3)


def _partial_results():
    row = {"round": 1, "client_accuracy_mean": 0.5, "client_accuracy_std": 0.1,
           "client_accuracy_min": 0.4, "global_accuracy_mean": 0.3, "bytes_up": 1,
           "bytes_down": 1, "seconds": 1.0}
    return {"strategy": "fedmd", "dataset": "digits", "partitioner": {"name": "iid"},
            "num_clients": 1, "clients": [{"id": 0, "architecture": "mlp",
                                          "framework": "pytorch", "num_train": 3}],
            "history": [row], "baselines": {}, "complete": False, "running_phase": "main"}


def test_results_of_a_run_in_progress_validate_and_report(tmp_path):
    partial = _partial_results()
    validate_results(partial)
    report, _ = write_report(partial, tmp_path)
    assert "In progress" in report.read_text()
    with pytest.raises(ValueError, match="local_only"):
        validate_results({**partial, "complete": True})


def test_resume_refuses_another_config(tmp_path):
    cfg = load_config("simulations/configs/digits_tiny.toml")
    with pytest.raises(ResumeError, match="nothing to resume"):
        _open_checkpoint(cfg, tmp_path / "checkpoint", resume=True)
    assert _open_checkpoint(cfg, tmp_path / "checkpoint", resume=False) == {}
    assert _open_checkpoint(cfg, tmp_path / "checkpoint", resume=True) == {}
    other = cfg.with_overrides(num_rounds=cfg.num_rounds + 1)
    with pytest.raises(ResumeError, match="num_rounds"):
        _open_checkpoint(other, tmp_path / "checkpoint", resume=True)
    saved = tmp_path / "checkpoint" / "config.json"
    assert json.loads(saved.read_text())["num_rounds"] == cfg.num_rounds
    # a run written before a config section existed resumes (the section's defaults)
    older = json.loads(saved.read_text())
    del older["robust"]
    saved.write_text(json.dumps(older))
    assert _open_checkpoint(cfg, tmp_path / "checkpoint", resume=True) == {}
    saved.write_text("{not json")
    with pytest.raises((ResumeError, ValueError)):
        _open_checkpoint(cfg, tmp_path / "checkpoint", resume=True)


def test_cli_resume_without_a_run_exits_2(tmp_path, capsys):
    code = cli.main(["run", "--config", "simulations/configs/digits_tiny.toml",
                     "--out", str(tmp_path), "--resume"])
    assert code == 2 and "nothing to resume" in capsys.readouterr().err
