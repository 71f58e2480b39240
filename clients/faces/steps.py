"""Run any :class:`~clients.privacy.step.ClientStep` on either Flower face.

:class:`StepMod` is a Message-API client mod; :class:`StepNumPyClient` wraps a compat
``NumPyClient``. Both translate Flower's types into an instruction and a reply, so a
step's logic exists once.
"""

from __future__ import annotations

from logging import ERROR

from flwr.app import Context, Error, Message, MessageType
from flwr.client import NumPyClient
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.common.logger import log

from flhet_strategies import wire
from flhet_strategies.faces.records import (
    arrays_from_evaluate_metrics,
    compat_from_instruction,
    evaluate_metrics_with_arrays,
    instruction_from_compat,
    instruction_of,
    reply_content,
    reply_from_compat,
    reply_of,
    reply_to_compat,
    set_instruction,
)
from flhet_strategies.protocol import Reply

from ..privacy.step import ClientStep, StepEnv, StepRefusal

_KINDS = {MessageType.TRAIN: "train", MessageType.EVALUATE: "evaluate"}


def error_reply(msg: Message, reason: str) -> Message:
    """Log ``reason`` and answer ``msg`` with a ``MOD_FAILED_PRECONDITION`` error."""
    log(ERROR, reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


class StepMod:
    """A Flower client mod that runs a :class:`ClientStep` around the app.

    Parameters
    ----------
    step : ClientStep
        What to do before and after the app answers.
    """

    def __init__(self, step: ClientStep) -> None:
        if not isinstance(step, ClientStep):
            raise TypeError(f"step must be a ClientStep, got {type(step).__name__}")
        self.step = step

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.step!r})"

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Edit the instruction, run the app, edit its reply (error reply if refused).

        Parameters
        ----------
        msg : Message
            The message from the ServerApp.
        context : Context
            The node's context.
        call_next : ClientAppCallable
            The next mod or the ClientApp.
        """
        kind = _KINDS.get(msg.metadata.message_type)
        if kind is None:
            return call_next(msg, context)
        env = StepEnv(context.node_config, context.run_config)
        instruction = instruction_of(msg)
        name = type(self).__name__
        try:
            edited, memo = self.step.before(instruction, env, kind)
        except (StepRefusal, ValueError, TypeError, OSError) as error:
            return error_reply(msg, f"{name}: {error}")
        if edited is not instruction:
            set_instruction(msg, edited)
        answer = call_next(msg, context)
        if answer.has_error():
            return answer
        try:
            reply = self.step.after(instruction, memo, reply_of(answer), env, kind)
        except (StepRefusal, ValueError, TypeError, OSError) as error:
            return error_reply(msg, f"{name}: {error}")
        return Message(content=reply_content(reply), reply_to=msg)


class StepNumPyClient(NumPyClient):
    """A compat ``NumPyClient`` that runs a :class:`ClientStep` around another one.

    Parameters
    ----------
    client : NumPyClient
        The wrapped client (e.g. a :class:`~clients.faces.numpy_client.FlhetNumPyClient`,
        or another step wrapper).
    step : ClientStep
        What to do before and after it answers.
    context : flwr.app.Context, optional
        The node's context (its node and run config, e.g. for a key file path).

    Raises
    ------
    TypeError
        If ``client`` is not a ``NumPyClient``.
    """

    def __init__(self, client: NumPyClient, step: ClientStep,
                 context: Context | None = None) -> None:
        if not isinstance(client, NumPyClient):
            raise TypeError(f"client must be a NumPyClient, got {type(client).__name__}")
        if not isinstance(step, ClientStep):
            raise TypeError(f"step must be a ClientStep, got {type(step).__name__}")
        self.client = client
        self.step = step
        self._context = context

    def _env(self) -> StepEnv:
        if self._context is None:
            return StepEnv()
        return StepEnv(self._context.node_config, self._context.run_config)

    def fit(self, parameters, config):
        """Edit the instruction, fit the wrapped client, edit its reply.

        Raises
        ------
        ValueError
            When the step refuses (Flower reports the client as failed).
        """
        env = self._env()
        instruction = instruction_from_compat(parameters, config)
        edited, memo = self.step.before(instruction, env, "train")
        arrays, num_examples, metrics = self.client.fit(*compat_from_instruction(edited))
        reply = self.step.after(instruction, memo, reply_from_compat(arrays, num_examples, metrics),
                                env, "train")
        out_arrays, out_metrics = reply_to_compat(reply)
        return out_arrays, int(out_metrics.pop(wire.NUM_EXAMPLES, num_examples)), out_metrics

    def evaluate(self, parameters, config):
        """Edit the instruction, evaluate the wrapped client, edit its reply."""
        env = self._env()
        instruction = instruction_from_compat(parameters, config)
        edited, memo = self.step.before(instruction, env, "evaluate")
        loss, num_examples, metrics = self.client.evaluate(*compat_from_instruction(edited))
        arrays, plain = arrays_from_evaluate_metrics(metrics)
        reply = self.step.after(instruction, memo,
                                Reply("", arrays, {**plain, wire.NUM_EXAMPLES: num_examples}),
                                env, "evaluate")
        out = {k: v for k, v in reply.metrics.items() if k != wire.NUM_EXAMPLES}
        return loss, num_examples, evaluate_metrics_with_arrays(out, reply.arrays)

    def get_parameters(self, config):
        """Delegate to the wrapped client."""
        return self.client.get_parameters(config)

    def get_properties(self, config):
        """Delegate to the wrapped client."""
        return self.client.get_properties(config)


__all__ = ["StepMod", "StepNumPyClient", "error_reply"]
