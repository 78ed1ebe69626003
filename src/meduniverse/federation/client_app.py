"""The site side: a Flower ClientApp that trains and evaluates on the site's private data.

Only model weights and scalar metrics leave it (tests/test_federation.py checks every message it
sends).
"""

from collections.abc import Callable
import time

from flwr.app import ConfigRecord, Context, Error, Message
from flwr.clientapp import ClientApp
import torch

from meduniverse.core.config import SITE_NAME, FederationConfig, SiteConfig
from meduniverse.core.device import computing
from meduniverse.core.errors import DataError, PrivacyError, StageError
from meduniverse.core.progress import log
from meduniverse.core.tasks import task_type
from meduniverse.federation.messages import (
    ARRAYS,
    CONFIG,
    from_arrays,
    pool_sent,
    reply,
    to_arrays,
)
from meduniverse.federation.schema import ERROR_CODES, error_reason
from meduniverse.federation.secure_site import secure_route
from meduniverse.method.distill import pool_logits
from meduniverse.method.loop import TrainStats
from meduniverse.method.personal import train_ditto, train_fedrep
from meduniverse.method.private import train_private
from meduniverse.method.site import evaluate_arm, keep_better, stage_method, train_site
from meduniverse.method.supervised import evaluate, proximal_term
from meduniverse.models.universal import (
    PERSONAL_PREFIX,
    TaskInfo,
    UniversalModel,
    as_personal,
    build_model,
    encoder_part,
    is_task_key,
    personal_part,
)
from meduniverse.sites.sources import SiteData, load_site

ConfigSource = Callable[[Context], FederationConfig]


def site_of(context: Context, config: FederationConfig) -> SiteConfig:
    """This node's site: node_config 'site' (deployment) or 'partition-id' (simulation)."""
    if "site" in context.node_config:
        return config.site(str(context.node_config["site"]))
    return config.sites[int(context.node_config["partition-id"])]


def error_code(exc: BaseException) -> str:
    """The fixed code an exception is reported under (its text stays at the site)."""
    if isinstance(exc, DataError):
        return "data"
    if isinstance(exc, PrivacyError):
        return "privacy"
    if isinstance(exc, StageError):
        return "stage"
    if isinstance(exc, MemoryError):
        return "resources"
    return "internal"


def error_reply(msg: Message, site: str, exc: BaseException) -> Message:
    """The reply to a request a site failed: its name and a fixed code; the details (logged with
    the traceback) stay in the site's own log."""
    log.error("site '%s' failed: %s", site, exc, exc_info=True)
    code = error_code(exc)
    return Message(Error(ERROR_CODES[code], error_reason(site, code)), reply_to=msg)


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
    if unexpected or any(not is_task_key(k) for k in missing):
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


def handle_query(msg: Message, config: FederationConfig, data: SiteData, _: Context) -> Message:
    """Handshake: which site this node is and its split sizes (counts only)."""
    return reply(msg, data.task, describe(data), info={"site": data.name, "task": data.task})


def handle_train(
    msg: Message, config: FederationConfig, data: SiteData, context: Context
) -> Message:
    """Stage s at a site: fine-tune the received encoder + own head on private data; send the
    weights back, or with strict transfer (the request carries public pool images) only the
    model's logits on those images.

    Scores on the validation split before training (the previous stage's model, for the stage
    curves) and on validation and test after it (the stage's teacher); FedProx adds its proximal
    term to the loss; with `method.teachers` = 'best', the universal model's teacher is the better
    of this stage's model and the one the site kept (`keep_teacher`).
    """
    settings = msg.content[CONFIG]
    seed = int(settings["seed"])
    received = from_arrays(msg.content[ARRAYS])
    personal_state = personal_part(received)
    received = {k: v for k, v in received.items() if not k.startswith(PERSONAL_PREFIX)}
    model = site_model(config, data, received, seed)
    key = task_type(data.task).primary
    before = evaluate(model, data.name, data.splits["val"])[key]
    stats, extra, privacy = local_update(
        model, data, received, personal_state, settings, config, seed
    )
    kept = keep_teacher(model, data, settings, config, context)
    metrics = {
        "num-examples": len(data.splits["train"]),
        "train-loss": stats.loss,
        "train-seconds": stats.seconds,
        "train-images-per-second": stats.images_per_second,
        f"received-val-{key}": before,
        f"val-{key}": evaluate(model, data.name, data.splits["val"])[key],
        f"test-{key}": evaluate(model, data.name, data.splits["test"])[key],
        **privacy,
        **kept,
    }
    pool = pool_sent(msg)
    if pool is not None:
        group = {data.name: task_type(data.task).group}
        outputs = pool_logits(model, [data.name], {group[data.name]: pool.to(data.device)}, group)
        return reply(msg, data.task, metrics, outputs=outputs[data.name].cpu())
    return reply(msg, data.task, metrics, state={**model.state_dict(), **extra}, sent=received)


def local_update(
    model: UniversalModel,
    data: SiteData,
    received: dict[str, torch.Tensor],
    personal_state: dict[str, torch.Tensor],
    settings: ConfigRecord,
    config: FederationConfig,
    seed: int,
) -> tuple[TrainStats, dict[str, torch.Tensor], dict[str, float]]:
    """The stage's training at a site, by the strategy's 'local-mode': plain (FedAvg's, FedProx's
    with 'proximal-mu', ours), 'fedrep' or 'ditto' (with 'ditto-lambda'; its personal model,
    `personal.` keys, goes back too).

    Args:
        model: the received global encoder + head, trained in place.
        data: the site's data.
        received: the global weights received.
        personal_state: the site's personal model as the server kept it (Ditto; empty at first).
        settings: the message's settings.
        config: the federation (method and fine-tune schedule).
        seed: the stage's seed at this site.

    Returns:
        The global update's TrainStats, more weights to send back (the personal model), and more
        metrics (with privacy.dp: the epsilon spent so far).
    """
    mode, schedule = str(settings.get("local-mode", "plain")), config.finetune
    m = stage_method(config.method, int(settings["stage"]))
    if mode == "fedrep":
        return train_fedrep(model, data.name, data.splits, m, schedule, seed), {}, {}
    if mode == "ditto":
        personal = site_model(config, data, personal_state or received, seed)
        strength = float(settings["ditto-lambda"])
        stats, _ = train_ditto(model, personal, data.name, data.splits, m, schedule, seed, strength)
        return stats, as_personal(personal.state_dict()), {}
    if config.privacy.dp:
        stats, epsilon = train_private(
            model, data.name, data.splits["train"], m, config.privacy, seed, int(settings["stage"])
        )
        return stats, {}, {"dp-epsilon": epsilon}
    mu = float(settings.get("proximal-mu", 0.0))
    penalty = proximal_term(model, encoder_part(received), mu) if mu > 0 else None
    return train_site(model, data.name, data.splits, m, schedule, seed, penalty), {}, {}


def keep_teacher(
    model: UniversalModel,
    data: SiteData,
    settings: ConfigRecord,
    config: FederationConfig,
    context: Context,
) -> dict[str, int]:
    """`method.teachers` = 'best' for the universal model: `model` becomes the better of itself and
    the teacher this site kept in `Context.state` the stage before (`keep_better`), which is kept in
    turn. Returns the metric saying whether the kept one won (nothing with 'fresh' teachers)."""
    if config.method.teachers != "best" or settings.get("arm") != "universal":
        return {}
    stage, state = int(settings["stage"]), context.state
    last = state.config_records.get("teacher.stage")
    fresh = last is None or int(last["stage"]) != stage - 1
    kept = None if fresh else from_arrays(state.array_records["teacher.weights"])
    won = keep_better(model, data.name, data.splits["val"], kept)
    state["teacher.weights"] = to_arrays(model.state_dict())
    state["teacher.stage"] = ConfigRecord({"stage": stage})
    return {"kept-teacher": int(won)}


def handle_evaluate(msg: Message, config: FederationConfig, data: SiteData, _: Context) -> Message:
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
    return reply(msg, data.task, metrics)


def make_client_app(get_config: ConfigSource) -> ClientApp:
    """A ClientApp whose handlers load this node's site (cached per process) and run one step;
    secure aggregation's mod (`meduniverse.federation.secure_site`) sits in front of them."""

    def failed(msg: Message, context: Context, exc: Exception) -> Message:
        try:
            site = site_of(context, get_config(context)).name
        except Exception:  # no configuration: the node's own site name, if it is safe
            named = str(context.node_config.get("site", ""))
            site = named if SITE_NAME.fullmatch(named) else "?"
        return error_reply(msg, site, exc)

    app = ClientApp(mods=[secure_route(failed)])

    def run(
        handler: Callable[[Message, FederationConfig, SiteData, Context], Message],
    ) -> Callable[[Message, Context], Message]:
        def wrapped(msg: Message, context: Context) -> Message:
            try:
                config = get_config(context)
                with computing(
                    config.runtime, config.runtime.threads_per_site, keep_memory=False
                ) as compute:
                    data = site_data(context, config, compute.device)
                    return handler(msg, config, data, context)
            except Exception as exc:
                return failed(msg, context, exc)

        return wrapped

    app.query()(run(handle_query))
    app.train()(run(handle_train))
    app.evaluate()(run(handle_evaluate))
    return app
