"""What travels between server and sites: model weights (ArrayRecord), settings (ConfigRecord),
scalars (MetricRecord)."""

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
import torch

from meduniverse.core.errors import PrivacyError
from meduniverse.federation.schema import ERROR_REASON, check_reply

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
POOL, OUTPUTS = "pool", "outputs"  # strict transfer: public pool images out, their logits back
# secure aggregation: phase A's settings name the shared keys whose deltas phase B sums (in order);
# an evaluation request names the securely trained model whose kept parts the site puts in
SECURE_KEYS, SECURE_MODEL = "secure-keys", "secure-model"

# the names of Flower's error codes (a runtime's error: a site process killed, a node gone)
FLOWER_ERRORS = {v: k for k, v in vars(ErrorCode).items() if not k.startswith("_")}


def to_arrays(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu() for k, v in state.items()})


def from_arrays(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return record.to_torch_state_dict()


def request(
    message_type: str,
    node_id: int,
    config: dict,
    state: dict[str, torch.Tensor] | None = None,
    pool: torch.Tensor | None = None,
) -> Message:
    """A server -> site message: optional weights, optional public pool images, and a ConfigRecord.

    Args:
        message_type: Flower's message type (query, train, evaluate).
        node_id: the destination node.
        config: settings (scalars and short strings).
        state: weights to send, if any.
        pool: with strict transfer, the public pool images (uint8 N×C×S×S) whose outputs the site
            sends back instead of weights.
    """
    content = RecordDict({CONFIG: ConfigRecord(config)})
    if state is not None:
        content[ARRAYS] = to_arrays(state)
    if pool is not None:
        content[POOL] = to_arrays({"images": pool})
    return Message(content=content, message_type=message_type, dst_node_id=node_id)


def pool_sent(msg: Message) -> torch.Tensor | None:
    """The pool images a request carries (strict transfer), or None."""
    return from_arrays(msg.content[POOL])["images"] if POOL in msg.content else None


def outputs_received(msg: Message) -> torch.Tensor | None:
    """The pool outputs a reply carries (strict transfer), or None."""
    return from_arrays(msg.content[OUTPUTS])["logits"] if OUTPUTS in msg.content else None


def reply(
    to: Message,
    task: str,
    metrics: dict[str, float | int],
    state: dict[str, torch.Tensor] | None = None,
    info: dict[str, str] | None = None,
    sent: dict[str, torch.Tensor] | None = None,
    outputs: torch.Tensor | None = None,
) -> Message:
    """A site -> server message: optional weights, scalar metrics and short text fields; nothing
    else, and only what the protocol allows (`meduniverse.federation.schema`): PrivacyError
    otherwise, before anything leaves.

    Args:
        to: the request answered (its message type decides the schema).
        task: the site's task type (its metric names).
        metrics: scalar metrics.
        state: the site model's weights (train replies only).
        info: short text fields (the handshake's site name and task type).
        sent: the weights the server sent (what `state` must match in keys and shapes).
        outputs: with strict transfer (the request carried pool images), the site model's logits
            on them, float16, one row per image: sent instead of weights.
    """
    pool = pool_sent(to)
    shape = None  # weights: no outputs expected
    if pool is not None:  # strict transfer: one row per pool image (no outputs: refused below)
        shape = (len(pool),) if outputs is None else (len(pool), *outputs.shape[1:])
    problems = check_reply(
        to.metadata.message_type, task, metrics, info, state, sent, outputs, shape
    )
    if problems:
        raise PrivacyError(f"reply not sent, it breaks the protocol: {'; '.join(problems)}")
    content = RecordDict({METRICS: MetricRecord(metrics)})
    if state is not None:
        content[ARRAYS] = to_arrays(state)
    if outputs is not None:
        content[OUTPUTS] = to_arrays({"logits": outputs})
    if info is not None:
        content[CONFIG] = ConfigRecord(info)
    return Message(content=content, reply_to=to)


def received(msg: Message) -> tuple[dict, dict | None, dict[str, torch.Tensor] | None]:
    """A reply as the server reads it, for `schema.check_reply`: its metrics, its text fields (None:
    none) and its weights (None: none)."""
    info = dict(msg.content.get(CONFIG, {})) or None
    weights = from_arrays(msg.content[ARRAYS]) if ARRAYS in msg.content else None
    return dict(msg.content.get(METRICS, {})), info, weights


def error_text(msg: Message) -> str:
    """What the server keeps of an error reply: the fixed form `schema.error_reason` makes, or a
    note that the reply was refused (free text from a site could carry its data)."""
    reason = brief(msg.error.reason)
    if ERROR_REASON.fullmatch(reason):
        return reason
    code = msg.error.code
    return (
        f"error reply refused: it carries free text (Flower's error code {code}, "
        f"{FLOWER_ERRORS.get(code, 'not one of its codes')}; Flower's own log lines tell more)"
    )


def brief(reason: str, limit: int = 300) -> str:
    """The useful end of a ClientApp error (Ray wraps it in several tracebacks)."""
    text = reason.rsplit("Message: ", 1)[-1].strip().strip("'>").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:limit]
