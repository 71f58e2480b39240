"""One compat-API strategy (``flwr.server.strategy``) for any flhet server half."""

from __future__ import annotations

from logging import INFO
from pathlib import Path

from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
)
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from ..protocol import ServerAlgorithm
from .views import FaceViews
from ..aggregation.claims import ClaimCheck
from .driver import RoundDriver, client_id_of
from .records import (
    arrays_from_evaluate_metrics,
    instruction_parameters,
    parameters_arrays,
    reply_from_compat,
)


class CompatStrategy(FaceViews, Strategy):
    """Drive a flhet :class:`~flhet_strategies.protocol.ServerAlgorithm` in the compat API.

    For ``ServerApp(server_fn=...)`` / ``NumPyClient`` deployments; pair it with
    :class:`clients.faces.numpy_client.FlhetNumPyClient`. Arrays travel as ``Parameters``
    in the order the config entry ``flhet-arrays`` names.

    Parameters
    ----------
    algorithm : ServerAlgorithm
        The server half.
    num_rounds : int, optional
        Total rounds (as in ``ServerConfig``), so the last round carries
        ``final-round`` and a privacy budget can cap the rounds.
    fraction_fit : float (default: 1.0)
        Fraction of available clients sampled for training.
    fraction_evaluate : float (default: 1.0)
        Fraction of available clients sampled for evaluation.
    min_available_clients : int (default: 2)
        Wait until this many clients are connected.
    evaluate_every : int (default: 1)
        Clients evaluate every this many rounds (and always after the last one).
    seed : int (default: 0)
        Seed of the client sampler.
    phase : str (default: "main")
        Name of this run, sent with every instruction (clients keep one model per phase).
    claims : ClaimCheck, optional
        Screens the training replies' client ids, example counts and label histograms
        before the algorithm sees them (default: duplicate ids and histograms that
        disagree with the count are rejected; caps and enrollment are opt-in).
    checkpoint : str or Path, optional
        File the round state is written to, atomically, after every finished round;
        :meth:`resume` continues from it (docs/resume.md).
    """

    def __init__(self, algorithm: ServerAlgorithm, *, num_rounds: int | None = None,
                 fraction_fit: float = 1.0, fraction_evaluate: float = 1.0,
                 min_available_clients: int = 2, evaluate_every: int = 1, seed: int = 0,
                 phase: str = "main", claims: ClaimCheck | None = None,
                 checkpoint: str | Path | None = None) -> None:
        super().__init__()
        self.driver = RoundDriver(
            algorithm, checkpoint=checkpoint, fraction_train=fraction_fit,
            fraction_evaluate=fraction_evaluate, min_available=min_available_clients,
            evaluate_every=evaluate_every, seed=seed, phase=phase, num_rounds=num_rounds,
            claims=claims)

    init_face = __init__
    """The face's own constructor (for named strategies that build their server half first)."""

    @staticmethod
    def population(face: dict) -> dict:
        """Clients and sampling fraction a privacy budget of these face options assumes."""
        return {"population": face.get("min_available_clients", 2),
                "fraction": face.get("fraction_fit", 1.0)}

    def face_settings(self) -> dict:
        """The options that rebuild this face around another server half."""
        d = self.driver
        return {"num_rounds": d.num_rounds, "fraction_fit": d.fraction_train,
                "fraction_evaluate": d.fraction_evaluate, "min_available_clients": d.min_available,
                "evaluate_every": d.evaluate_every, "seed": d.seed, "phase": d.phase,
                "claims": d.claims, "checkpoint": d.checkpoint}

    @property
    def remaining_rounds(self) -> int | None:
        """Rounds still to run: the ``ServerConfig(num_rounds=...)`` of a resumed run."""
        return self.driver.remaining_rounds

    @property
    def fraction_fit(self) -> float:
        """Fraction of clients sampled for training."""
        return self.driver.fraction_train

    @property
    def fraction_evaluate(self) -> float:
        """Fraction of clients sampled for evaluation."""
        return self.driver.fraction_evaluate

    @property
    def min_available_clients(self) -> int:
        """Clients to wait for."""
        return self.driver.min_available

    def _clients(self, client_manager: ClientManager, fraction: float,
                 server_round: int) -> list[ClientProxy]:
        # Wait for min_available_clients first, then sample a fraction of all connected.
        client_manager.wait_for(self.driver.min_available)
        clients = sorted(client_manager.all().values(), key=lambda c: c.cid)
        return self.driver.sample(clients, fraction, server_round)

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """No global model to start from (the algorithm holds its own state); logs it."""
        for line in self.algorithm.describe():
            log(INFO, "\t├── %s", line)
        return ndarrays_to_parameters([])

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        """Each sampled client's instruction."""
        server_round = self.driver.absolute(server_round)
        clients = self._clients(client_manager, self.driver.fraction_train, server_round)
        if not self.driver.planned and self.driver.num_rounds is not None:
            self.driver.plan(cohort_size=len(clients))   # the compat Server runs fixed rounds
        by_cid = {c.cid: c for c in clients}
        instructions = self.driver.train(server_round, list(by_cid))
        out = []
        for cid, instruction in instructions.items():
            arrays, config = instruction_parameters(instruction)
            out.append((by_cid[cid], FitIns(arrays, config)))
        return out

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Aggregate the results; invalid ones count as failures."""
        server_round = self.driver.absolute(server_round)
        replies = []
        for proxy, res in results:
            reply = reply_from_compat(parameters_arrays(res.parameters), res.num_examples,
                                      res.metrics, self.algorithm.reply_array_names)
            reply.client_id, reply.node_id = client_id_of(reply.metrics, proxy.cid), proxy.cid
            replies.append(reply)
        outcome, metrics = self.driver.aggregate_train(server_round, replies, len(failures))
        arrays = self.algorithm.result_arrays() if outcome is not None and outcome.released \
            else {}
        if not arrays:
            return None, metrics
        return ndarrays_to_parameters(list(arrays.values())), metrics

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager
                           ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Evaluation requests (and any task the algorithm attaches to them)."""
        server_round = self.driver.absolute(server_round)
        clients = []
        if self.driver.fraction_evaluate > 0 and self.driver.should_evaluate(server_round):
            clients = self._clients(client_manager, self.driver.fraction_evaluate, server_round)
        instructions = self.driver.evaluate(server_round, [c.cid for c in clients])
        proxies = client_manager.all()
        out = []
        for cid, instruction in instructions.items():
            if cid in proxies:
                arrays, config = instruction_parameters(instruction)
                out.append((proxies[cid], EvaluateIns(arrays, config)))
        return out

    def aggregate_evaluate(self, server_round: int,
                           results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list) -> tuple[float | None, dict[str, Scalar]]:
        """Summarise per-client accuracy; the loss is the mean of the scored clients'."""
        server_round = self.driver.absolute(server_round)
        replies, losses = [], []
        for proxy, res in results:
            arrays, metrics = arrays_from_evaluate_metrics(res.metrics)
            reply = reply_from_compat([], res.num_examples, metrics)
            reply.arrays = arrays
            reply.client_id, reply.node_id = client_id_of(metrics, proxy.cid), proxy.cid
            replies.append(reply)
            if "client_accuracy" in metrics:
                losses.append(res.loss)
        summary = self.driver.aggregate_evaluate(server_round, replies)
        return (sum(losses) / len(losses) if losses else None), summary

    def evaluate(self, server_round: int, parameters: Parameters
                 ) -> tuple[float, dict[str, Scalar]] | None:
        """No centralized evaluation: clients evaluate their own models."""
        return None


__all__ = ["CompatStrategy"]
