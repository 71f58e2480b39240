"""A compat-API ``ClientProxy`` that runs a ``NumPyClient`` in the test process.

Every instruction and reply goes through Flower's RecordDict conversion and protobuf
serialization both ways, i.e. what really travels between a compat server and its
clients, without starting Ray. Shared by the compat-face tests.
"""

from __future__ import annotations

from flwr.client import NumPyClient
from flwr.common import DisconnectRes
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.compat.common.recorddict_compat import (
    evaluateins_to_recorddict,
    evaluateres_to_recorddict,
    fitins_to_recorddict,
    fitres_to_recorddict,
    recorddict_to_evaluateins,
    recorddict_to_evaluateres,
    recorddict_to_fitins,
    recorddict_to_fitres,
)
from flwr.server.client_proxy import ClientProxy


def _wire(recorddict):
    return recorddict_from_proto(recorddict_to_proto(recorddict))


class InProcessProxy(ClientProxy):
    """Deliver a compat server's instructions to ``client`` as if over the network."""

    def __init__(self, cid: str, client: NumPyClient) -> None:
        super().__init__(cid)
        self.client = client.to_client()

    def fit(self, ins, timeout, group_id):
        ins = recorddict_to_fitins(_wire(fitins_to_recorddict(ins, True)), True)
        return recorddict_to_fitres(_wire(fitres_to_recorddict(self.client.fit(ins), True)), True)

    def evaluate(self, ins, timeout, group_id):
        ins = recorddict_to_evaluateins(_wire(evaluateins_to_recorddict(ins, True)), True)
        return recorddict_to_evaluateres(_wire(evaluateres_to_recorddict(self.client.evaluate(ins))))

    def get_properties(self, ins, timeout, group_id):
        return self.client.get_properties(ins)

    def get_parameters(self, ins, timeout, group_id):
        return self.client.get_parameters(ins)

    def reconnect(self, ins, timeout, group_id):
        return DisconnectRes(reason="in-process client")
