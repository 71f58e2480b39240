"""The error reply of a client mod that refuses a message (shared by flhet's mods)."""

from __future__ import annotations

from logging import ERROR

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from flwr.common.logger import log


def error_reply(msg: Message, reason: str) -> Message:
    """Log ``reason`` and answer ``msg`` with a ``MOD_FAILED_PRECONDITION`` error.

    Parameters
    ----------
    msg : Message
        The message the mod refuses.
    reason : str
        What is wrong; the server logs it as the node's failure.

    Returns
    -------
    Message
        An error reply to ``msg``.
    """
    log(ERROR, reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


__all__ = ["error_reply"]
