"""Test-only Grid that hands each message straight to an in-process ClientApp and records every
reply.

It drives the real ServerApp flow and the real ClientApp handlers without starting Ray (Flower's
Simulation Engine takes about 12 s to start here); users always run on Flower's own engines.
"""

from collections.abc import Iterable
from copy import deepcopy
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class LoopbackGrid(Grid):
    def __init__(self, client_app: ClientApp, num_nodes: int, node_config: dict | None = None):
        self.client_app = client_app
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = (
            1,
            1,
            SUPERLINK_NODE_ID,
        )  # as run_simulation does
        self.contexts = {
            1000 + i: Context(
                run_id=1,
                node_id=1000 + i,
                node_config={"partition-id": i, "num-partitions": num_nodes, **(node_config or {})},
                state=RecordDict(),
                run_config={},
            )
            for i in range(num_nodes)
        }
        self.outbox: dict[str, Message] = {}
        self.requests: list[Message] = []  # every message sent to a ClientApp, in order
        self.replies: list[Message] = []  # every message that left a ClientApp, in the same order
        self._run = None

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg_id = str(uuid4())
            msg.metadata.__dict__["_message_id"] = msg_id
            msg.metadata.__dict__["_src_node_id"] = 1
            self.requests.append(msg)
            # a copy, as if it had been sent: Flower's mods may change what they receive
            delivered = Message(metadata=msg.metadata, content=deepcopy(msg.content))
            try:
                reply = self.client_app(delivered, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:
                reply = Message(Error(code=0, reason=repr(exc)), reply_to=msg)
            self.replies.append(reply)
            self.outbox[msg_id] = reply
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.outbox.pop(i) for i in list(message_ids) if i in self.outbox]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
