"""What travels between server and sites: model weights (ArrayRecord), settings (ConfigRecord),
scalars (MetricRecord)."""

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
import torch

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"


def to_arrays(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu() for k, v in state.items()})


def from_arrays(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return record.to_torch_state_dict()


def request(
    message_type: str, node_id: int, config: dict, state: dict[str, torch.Tensor] | None = None
) -> Message:
    """A server -> site message: optional weights plus a ConfigRecord.

    Args:
        message_type: Flower's message type (query, train, evaluate).
        node_id: the destination node.
        config: settings (scalars and short strings).
        state: weights to send, if any.
    """
    content = RecordDict({CONFIG: ConfigRecord(config)})
    if state is not None:
        content[ARRAYS] = to_arrays(state)
    return Message(content=content, message_type=message_type, dst_node_id=node_id)


def reply(
    to: Message,
    metrics: dict[str, float | int],
    state: dict[str, torch.Tensor] | None = None,
    info: dict[str, str] | None = None,
) -> Message:
    """A site -> server message: optional weights, scalar metrics and short text fields; nothing
    else.

    Args:
        to: the request answered.
        metrics: scalar metrics.
        state: the site model's weights (train replies only).
        info: short text fields (the handshake's site name and task type).
    """
    content = RecordDict({METRICS: MetricRecord(metrics)})
    if state is not None:
        content[ARRAYS] = to_arrays(state)
    if info is not None:
        content[CONFIG] = ConfigRecord(info)
    return Message(content=content, reply_to=to)
