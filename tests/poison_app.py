"""Test-only ClientApp for tests/test_deployment.py, never part of the product: meduniverse's
deployed ClientApp, except that a node's --node-config can make it misbehave.

    poison = 'nan' | 'inf' | 'huge'   its training reply carries NaN, inf, or its weights times 1e6
    poison-stage = S                  ... only at stage S (default 0: every stage)
    fail-stage = S                    its training raises at stage S (what a rejected update amounts
    to)
    fail-from-stage = S               its training raises from stage S on, and every evaluation (a
    node gone)

`flwr run` ships this file in the test app's FAB (tests/test_deployment.py writes that app
directory).
"""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
import torch

from meduniverse.deploy.apps import node_federation
from meduniverse.federation.client_app import make_client_app
from meduniverse.federation.messages import ARRAYS, CONFIG, from_arrays, to_arrays

NEVER = 1 << 30


def poison(state: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    if how == "nan":
        return {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    if how == "inf":
        return {k: torch.full_like(v, float("inf")) for k, v in state.items()}
    if how == "huge":
        return {k: v * 1e6 for k, v in state.items()}
    raise ValueError(f"poison '{how}' unknown (nan, inf, huge)")


real = make_client_app(node_federation)
client_app = ClientApp()


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    return real(msg, context)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    node, stage = context.node_config, int(msg.content[CONFIG]["stage"])
    if stage == int(node.get("fail-stage", -1)) or stage >= int(node.get("fail-from-stage", NEVER)):
        raise RuntimeError(f"site {node['site']} fails at stage {stage} (test)")
    reply = real(msg, context)
    if "poison" in node and int(node.get("poison-stage", 0)) in (0, stage):
        reply.content[ARRAYS] = to_arrays(
            poison(from_arrays(reply.content[ARRAYS]), str(node["poison"]))
        )
    return reply


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    if "fail-from-stage" in context.node_config:
        raise RuntimeError(f"site {context.node_config['site']} is gone (test)")
    return real(msg, context)
