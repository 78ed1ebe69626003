"""The site side: a Flower ClientApp that trains and evaluates on the site's private data.

Only model weights and scalar metrics leave it (tests/test_federation.py checks every message it
sends).
"""

from collections.abc import Callable
import time

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
import torch

from meduniverse.core.config import FederationConfig, SiteConfig
from meduniverse.core.device import Compute
from meduniverse.core.tasks import task_type
from meduniverse.federation.messages import ARRAYS, CONFIG, from_arrays, reply
from meduniverse.method.site import evaluate, evaluate_arm, proximal_term, train_site
from meduniverse.models.universal import TaskInfo, build_model, encoder_part
from meduniverse.sites.sources import SiteData, load_site

ConfigSource = Callable[[Context], FederationConfig]


def site_of(context: Context, config: FederationConfig) -> SiteConfig:
    """This node's site: node_config 'site' (deployment) or 'partition-id' (simulation)."""
    if "site" in context.node_config:
        return config.site(str(context.node_config["site"]))
    return config.sites[int(context.node_config["partition-id"])]


def site_data(context: Context, config: FederationConfig, device: torch.device) -> SiteData:
    """This node's private data at its input spec, on `device` (loaded once per process)."""
    site = site_of(context, config)
    return load_site(site, config.pool, config.input_spec(site.task), config.seed, device)


def site_model(config: FederationConfig, data: SiteData, state: dict[str, torch.Tensor], seed: int):
    """Encoder + this site's head from the weights the server sent (a missing head starts fresh), on
    the device of the site's data.

    Args:
        config: the federation (the model's settings).
        data: the site's data (its name, task and classes).
        state: the weights received (encoder and, unless it starts fresh, the site's head).
        seed: the seed of a fresh head's initialisation.
    """
    model = build_model(config, [TaskInfo(data.name, data.task, data.config.classes)], seed=seed)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("heads.") for k in missing):
        raise ValueError(
            f"site '{data.name}': weights do not fit the model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]})"
        )
    return model.to(data.device)


def describe(data: SiteData) -> dict[str, int]:
    return {
        "num-train": len(data.splits["train"]),
        "num-val": len(data.splits["val"]),
        "num-test": len(data.splits["test"]),
    }


def handle_query(msg: Message, config: FederationConfig, data: SiteData) -> Message:
    """Handshake: which site this node is and its split sizes (counts only)."""
    return reply(msg, describe(data), info={"site": data.name, "task": data.task})


def handle_train(msg: Message, config: FederationConfig, data: SiteData) -> Message:
    """Stage s at a site: fine-tune the received encoder + own head on private data; send the
    weights back.

    Scores on the validation split before training (the previous stage's model, for the stage
    curves) and on validation and test after it (the stage's teacher); FedProx adds its proximal
    term to the loss.
    """
    settings = msg.content[CONFIG]
    seed = int(settings["seed"])
    received = from_arrays(msg.content[ARRAYS])
    model = site_model(config, data, received, seed)
    key = task_type(data.task).primary
    before = evaluate(model, data.name, data.splits["val"])[key]
    mu = float(settings.get("proximal-mu", 0.0))
    penalty = proximal_term(model, encoder_part(received), mu) if mu > 0 else None
    stats = train_site(model, data.name, data.splits, config.method, config.finetune, seed, penalty)
    metrics = {
        "num-examples": len(data.splits["train"]),
        "train-loss": stats.loss,
        "train-seconds": stats.seconds,
        "train-images-per-second": stats.images_per_second,
        f"received-val-{key}": before,
        f"val-{key}": evaluate(model, data.name, data.splits["val"])[key],
        f"test-{key}": evaluate(model, data.name, data.splits["test"])[key],
    }
    return reply(msg, metrics, state=model.state_dict())


def handle_evaluate(msg: Message, config: FederationConfig, data: SiteData) -> Message:
    """Evaluate an arm at the site: fine-tune or probe first if its mode says so, then score val and
    test."""
    settings = msg.content[CONFIG]
    seed = int(settings["seed"])
    model = site_model(config, data, from_arrays(msg.content[ARRAYS]), seed)
    start = time.perf_counter()
    metrics = evaluate_arm(
        model, data.name, data.splits, str(settings["mode"]), config.method, config.finetune, seed
    )
    metrics["seconds"] = time.perf_counter() - start
    return reply(msg, metrics)


def make_client_app(get_config: ConfigSource) -> ClientApp:
    """A ClientApp whose handlers load this node's site (cached per process) and run one step."""
    app = ClientApp()

    def run(
        handler: Callable[[Message, FederationConfig, SiteData], Message],
    ) -> Callable[[Message, Context], Message]:
        def wrapped(msg: Message, context: Context) -> Message:
            config = get_config(context)
            torch.set_num_threads(config.runtime.threads_per_site)
            compute = Compute.of(config.runtime)
            with compute.autocast():
                return handler(msg, config, site_data(context, config, compute.device))

        return wrapped

    app.query()(run(handle_query))
    app.train()(run(handle_train))
    app.evaluate()(run(handle_evaluate))
    return app
