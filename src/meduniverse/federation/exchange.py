"""The server's side of message exchange with the sites: send and collect replies with progress,
wait for nodes, the handshake that tells which node is which site, the bytes a message carries."""

from collections.abc import Callable
import time

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from meduniverse.core.config import FederationConfig
from meduniverse.core.errors import StageError
from meduniverse.core.progress import RunProgress
from meduniverse.federation.messages import error_text, received, request
from meduniverse.federation.schema import QUERY, check_reply


def exchange(
    grid: Grid,
    messages: list[Message],
    timeout: float,
    on_reply: Callable[[Message], None] | None = None,
) -> list[Message]:
    """Grid.send_and_receive, reporting each reply as it arrives (for progress and per-site logs).

    An error the SuperLink sends on behalf of a node that went away (NODE_UNAVAILABLE: its sender is
    the SuperLink) is turned into that node's own error reply, so that callers can name the site.

    Args:
        grid: Flower's grid.
        messages: one per node.
        timeout: seconds to wait for the replies.
        on_reply: called with each reply as it arrives.
    """
    ids = list(grid.push_messages(messages))
    if len(ids) != len(messages) or not all(ids):
        raise StageError(
            f"the SuperLink took {sum(map(bool, ids))} of {len(messages)} messages (see its log)"
        )
    sent = dict(zip(ids, messages, strict=True))
    pending = set(sent)
    deadline, replies = time.time() + timeout, []
    while pending and time.time() < deadline:
        for msg in grid.pull_messages(pending):
            original = sent.get(msg.metadata.reply_to_message_id)
            if (
                msg.has_error()
                and original is not None
                and msg.metadata.src_node_id != original.metadata.dst_node_id
            ):
                msg = Message(msg.error, reply_to=original)
            replies.append(msg)
            pending.discard(msg.metadata.reply_to_message_id)
            if on_reply:
                on_reply(msg)
        time.sleep(0.1)
    return replies


def exchange_with_progress(
    grid: Grid,
    messages: list[Message],
    description: str,
    config: FederationConfig,
    progress: RunProgress,
) -> list[Message]:
    """exchange() with a progress bar counting the sites that have answered.

    Args:
        grid: Flower's grid.
        messages: one per node.
        description: the progress bar's label.
        config: the federation (runtime.reply_timeout).
        progress: the run's progress bars.
    """
    on_site = progress.phase(description, len(messages))
    done: list[Message] = []
    return exchange(
        grid,
        messages,
        config.runtime.reply_timeout,
        lambda m: (done.append(m), on_site(len(done), len(messages))),
    )


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    deadline = time.time() + timeout
    while len(nodes := list(grid.get_node_ids())) < count:
        if time.time() > deadline:
            raise StageError(f"only {len(nodes)} of {count} sites connected within {timeout:.0f} s")
        time.sleep(0.2)
    return nodes


class Roster(dict[int, str]):
    """node id -> site name, in the configuration's order; each site's task type (`tasks`) and its
    train-split size as its handshake gave it (`train_sizes`, the bound of its `num-examples`)."""

    def __init__(
        self, items: list[tuple[int, str]], tasks: dict[str, str], train_sizes: dict[str, int]
    ):
        super().__init__(items)
        self.tasks, self.train_sizes = tasks, train_sizes


def handshake(grid: Grid, config: FederationConfig) -> Roster:
    """Ask every node which site it is; every configured site must answer exactly once, with a
    reply that keeps to the protocol."""
    nodes = wait_for_nodes(grid, len(config.sites), config.runtime.reply_timeout)
    replies = exchange(
        grid, [request(MessageType.QUERY, n, {}) for n in nodes], config.runtime.reply_timeout
    )
    roster, sizes, tasks = {}, {}, {s.name: s.task for s in config.sites}
    for msg in replies:
        if msg.has_error():
            raise StageError(
                f"handshake: node {msg.metadata.src_node_id} failed: {error_text(msg)}"
            )
        metrics, info, _ = received(msg)
        info = info or {}
        site = str(info.get("site"))
        problems = (
            ["not a site of the federation"]
            if site not in tasks
            else check_reply(QUERY, tasks[site], metrics, info, None, None)
        )
        if problems or info.get("task") != tasks.get(site):
            raise StageError(
                f"handshake: node {msg.metadata.src_node_id}: reply refused "
                f"({'; '.join(problems) or 'wrong task type'})"
            )
        roster[msg.metadata.src_node_id], sizes[site] = site, int(metrics["num-train"])
    missing = {s.name for s in config.sites} - set(roster.values())
    if missing or len(set(roster.values())) != len(roster):
        raise StageError(
            f"handshake: sites missing {sorted(missing)} or answering twice: "
            f"{sorted(roster.values())}"
        )
    order = [
        s.name for s in config.sites
    ]  # the configuration's order, not the order the nodes answered in
    return Roster(sorted(roster.items(), key=lambda item: order.index(item[1])), tasks, sizes)


def message_bytes(msg: Message) -> int:
    """Bytes of the weights a message carries."""
    return sum(
        len(array.data)
        for record in msg.content.array_records.values()
        for array in record.values()
    )
