"""The site's side of secure aggregation (`meduniverse.federation.secure`): a ClientApp mod that
routes the SecAgg+ messages to Flower's own `secaggplus_mod`, keeps the site model of a secure
stage's phase A in the node's `Context.state`, and puts the head and local layers it kept into
the next stage's and the evaluations' weights.

Phase A's reply leaves with its metrics only; phase B's app step (`delta_reply`) hands
`secaggplus_mod` the encoder delta and `num-examples` as a legacy FitRes, which it masks before
anything leaves.
"""

from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
import flwr.compat.common.recorddict_compat as compat
import torch

from meduniverse.core.errors import StageError
from meduniverse.core.progress import log
from meduniverse.federation.messages import (
    ARRAYS,
    CONFIG,
    METRICS,
    SECURE_KEYS,
    SECURE_MODEL,
    from_arrays,
    to_arrays,
)
from meduniverse.federation.schema import EVALUATE, TRAIN

OnError = Callable[[Message, Context, Exception], Message]


def kept_key(model: str, what: str) -> str:
    """Where `Context.state` keeps a securely trained model's 'kept' parts (head and local layers),
    its 'delta' (the shared weights' change) or its 'stage' (stage and num-examples)."""
    return f"secure.{model}.{what}"


def with_weights(msg: Message, state: dict[str, torch.Tensor]) -> Message:
    """`msg` with other weights (the same metadata and settings)."""
    content = RecordDict(dict(msg.content))
    content[ARRAYS] = to_arrays(state)
    return Message(metadata=msg.metadata, content=content)


def own_parts(msg: Message, context: Context, model: str) -> dict[str, torch.Tensor]:
    """The weights `msg` carries, with the head and local layers this site kept for `model` in
    place of the server's copies (which never saw them)."""
    received = from_arrays(msg.content[ARRAYS])
    kept = context.state.array_records.get(kept_key(model, "kept"))
    own = from_arrays(kept) if kept is not None else {}
    return {**received, **{k: v for k, v in own.items() if k in received}}


def train_and_keep(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Phase A: the app trains the site model (with the parts this site kept); the site keeps its
    head and local layers and its encoder delta, and the reply leaves with its metrics only."""
    settings = msg.content[CONFIG]
    model, keys = str(settings["arm"]), [str(k) for k in settings[SECURE_KEYS]]
    if int(settings["stage"]) > 1 and kept_key(model, "kept") not in context.state.array_records:
        log.warning("'%s': no head kept here (restarted?), it starts from the server's", model)
    sent = with_weights(msg, own_parts(msg, context, model))
    out = call_next(sent, context)
    if out.has_error():
        return out
    received, trained = from_arrays(sent.content[ARRAYS]), from_arrays(out.content[ARRAYS])
    state = context.state
    state[kept_key(model, "kept")] = to_arrays({k: v for k, v in trained.items() if k not in keys})
    state[kept_key(model, "delta")] = to_arrays(
        {k: trained[k].float() - received[k].float() for k in keys}
    )
    state[kept_key(model, "stage")] = ConfigRecord(
        {"stage": int(settings["stage"]), "num-examples": int(out.content[METRICS]["num-examples"])}
    )
    return Message(RecordDict({METRICS: out.content[METRICS]}), reply_to=msg)


def delta_reply(msg: Message, context: Context) -> Message:
    """Phase B's app step inside `secaggplus_mod`: the kept encoder delta of the model and stage
    the request names, with its `num-examples`, as a legacy FitRes."""
    ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    model, stage = str(ins.config["arm"]), int(ins.config["stage"])
    kept = context.state.config_records.get(kept_key(model, "stage"))
    if kept is None or int(kept["stage"]) != stage:
        raise StageError(f"no site model of '{model}' stage {stage} kept for its secure sum")
    delta = context.state.array_records[kept_key(model, "delta")]
    parameters = ndarrays_to_parameters([array.numpy() for array in delta.values()])
    fitres = FitRes(Status(Code.OK, ""), parameters, int(kept["num-examples"]), {})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


def secure_route(on_error: OnError) -> Mod:
    """The ClientApp mod of secure aggregation: SecAgg+ messages (their configs carry its stage) go
    to `secaggplus_mod` with `delta_reply` as the app, phase A of a secure stage to
    `train_and_keep`; an evaluation of a securely trained model gets the parts the site kept. Any
    other message goes straight to the app.

    Args:
        on_error: the error reply to a request the site failed (a fixed code, no free text).
    """

    def route(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        kind, settings = msg.metadata.message_type, msg.content.config_records.get(CONFIG, {})
        try:
            if kind == TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
                return secaggplus_mod(msg, context, delta_reply)
            if kind == TRAIN and SECURE_KEYS in settings:
                return train_and_keep(msg, context, call_next)
            if kind == EVALUATE and SECURE_MODEL in settings:
                model = str(settings[SECURE_MODEL])
                if kept_key(model, "kept") not in context.state.array_records:
                    raise StageError(f"'{model}' was trained securely but its site parts are lost")
                return call_next(with_weights(msg, own_parts(msg, context, model)), context)
        except Exception as exc:
            return on_error(msg, context, exc)
        return call_next(msg, context)

    return route
