"""The privacy steps under their public names, for both Flower faces.

Message API mods: :class:`PaillierMod`, :class:`DpNoiseMod`. Compat ``NumPyClient``
wrappers: :class:`SecureSumNumPyClient`, :class:`DpNoiseNumPyClient`. Each only binds a
step of :mod:`clients.privacy`; the logic is the step's, once. With both, Paillier is
outermost, so the noise share is added before the encryption::

    mods=[PaillierMod(key_path), DpNoiseMod()]
    SecureSumNumPyClient(DpNoiseNumPyClient(FlhetNumPyClient(...)), key_path)
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.client import NumPyClient

from ..privacy.dp import DpNoiseStep
from ..privacy.paillier import PaillierStep
from .steps import StepMod, StepNumPyClient


class PaillierMod(StepMod):
    """Client mod of a Paillier secure sum (any weighted-sum algorithm, Message API).

    Decrypts (or opens the seal of) the sum the server relays into the plain
    instruction, encrypts the reply's contribution, and answers decryption requests for
    the cohort. Parameters are those of :class:`clients.privacy.paillier.PaillierSettings`
    (``key_path``, or the node config ``paillier-key-path``; ``workers``, ...).

    Examples
    --------
    ::

        files = deal_keys("keys/")        # once, by the key dealer, not the server
        app = flhet_client_app(factory, mods=[PaillierMod(files.private_path)])
    """

    def __init__(self, key_path: str | Path | None = None, **settings) -> None:
        super().__init__(PaillierStep(key_path, **settings))


class DpNoiseMod(StepMod):
    """Client mod of distributed DP (any weighted-sum algorithm, Message API).

    Clips the reply's contribution and adds this client's noise share; parameters are
    those of :class:`clients.privacy.dp.DpNoiseStep` (fallbacks for what the server
    sends).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(DpNoiseStep(*args, **kwargs))


class SecureSumNumPyClient(StepNumPyClient):
    """Compat face of :class:`PaillierMod`: a ``NumPyClient`` around a ``NumPyClient``.

    Parameters
    ----------
    client : NumPyClient
        The wrapped client (a :class:`~clients.faces.numpy_client.FlhetNumPyClient`, or a
        :class:`DpNoiseNumPyClient` around one).
    key_path : str or Path, optional
        The private key file; else the context's node (then run) config names it.
    context : flwr.app.Context, optional
        The node's context.
    **settings
        The other options of :class:`clients.privacy.paillier.PaillierSettings`.
    """

    def __init__(self, client: NumPyClient, key_path: str | Path | None = None, *,
                 context: Context | None = None, **settings) -> None:
        super().__init__(client, PaillierStep(key_path, **settings), context)


class DpNoiseNumPyClient(StepNumPyClient):
    """Compat face of :class:`DpNoiseMod`.

    Parameters
    ----------
    client : NumPyClient
        The wrapped client.
    *args, **kwargs
        The parameters of :class:`clients.privacy.dp.DpNoiseStep`.
    """

    def __init__(self, client: NumPyClient, *args, **kwargs) -> None:
        super().__init__(client, DpNoiseStep(*args, **kwargs))


PaillierConsensusMod = PaillierMod
"""Earlier name of :class:`PaillierMod` (kept for existing apps)."""
DpPredictionsMod = DpNoiseMod
"""Earlier name of :class:`DpNoiseMod` (kept for existing apps)."""
SecureConsensusNumPyClient = SecureSumNumPyClient
"""Earlier name of :class:`SecureSumNumPyClient` (kept for existing apps)."""
DpPredictionsNumPyClient = DpNoiseNumPyClient
"""Earlier name of :class:`DpNoiseNumPyClient` (kept for existing apps)."""

__all__ = ["DpNoiseMod", "DpNoiseNumPyClient", "DpPredictionsMod", "DpPredictionsNumPyClient",
           "PaillierConsensusMod", "PaillierMod", "SecureConsensusNumPyClient",
           "SecureSumNumPyClient"]
