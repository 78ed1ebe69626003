"""The server side: a Flower ServerApp running stage 0 (MIM), stages 1..S and the evaluation arms.

Every stage is checkpointed; a restarted run resumes after the last completed stage.
"""

from collections.abc import Callable
from pathlib import Path
import time

from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.serverapp import Grid, ServerApp
import torch

from meduniverse.checkpoints import Checkpoints
from meduniverse.config import FederationConfig
from meduniverse.errors import StageError
from meduniverse.evaluation import Arm, arms_for
from meduniverse.federation.messages import CONFIG, METRICS, from_arrays, request, to_arrays
from meduniverse.federation.strategy import SiteHeads, UniversalDistillation, brief, competitor_strategy, stage_seed
from meduniverse.models.heads import DecoderHead
from meduniverse.models.universal import build_model, site_state
from meduniverse.progress import RunProgress, log
from meduniverse.sites import load_pool
from meduniverse.training import pretrain_mim


def exchange(grid: Grid, messages: list[Message], timeout: float, on_reply: Callable[[Message], None] | None = None) -> list[Message]:
    """Grid.send_and_receive, reporting each reply as it arrives (for progress and per-site logs).

    An error the SuperLink sends on behalf of a node that went away (NODE_UNAVAILABLE: its sender is the
    SuperLink) is turned into that node's own error reply, so that callers can name the site.
    """
    ids = list(grid.push_messages(messages))
    if len(ids) != len(messages) or not all(ids):
        raise StageError(f"the SuperLink took {sum(map(bool, ids))} of {len(messages)} messages (see its log)")
    sent = dict(zip(ids, messages, strict=True))
    pending = set(sent)
    deadline, replies = time.time() + timeout, []
    while pending and time.time() < deadline:
        for msg in grid.pull_messages(pending):
            original = sent.get(msg.metadata.reply_to_message_id)
            if msg.has_error() and original is not None and msg.metadata.src_node_id != original.metadata.dst_node_id:
                msg = Message(msg.error, reply_to=original)
            replies.append(msg)
            pending.discard(msg.metadata.reply_to_message_id)
            if on_reply:
                on_reply(msg)
        time.sleep(0.1)
    return replies


def exchange_with_progress(grid: Grid, messages: list[Message], description: str, config: FederationConfig,
                           progress: RunProgress) -> list[Message]:
    """exchange() with a progress bar counting the sites that have answered."""
    on_site = progress.phase(description, len(messages))
    done: list[Message] = []
    return exchange(grid, messages, config.runtime.reply_timeout, lambda m: (done.append(m), on_site(len(done), len(messages))))


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    deadline = time.time() + timeout
    while len(nodes := list(grid.get_node_ids())) < count:
        if time.time() > deadline:
            raise StageError(f"only {len(nodes)} of {count} sites connected within {timeout:.0f} s")
        time.sleep(0.2)
    return nodes


def handshake(grid: Grid, config: FederationConfig) -> dict[int, str]:
    """Ask every node which site it is; every configured site must answer exactly once."""
    nodes = wait_for_nodes(grid, len(config.sites), config.runtime.reply_timeout)
    replies = exchange(grid, [request(MessageType.QUERY, n, {}) for n in nodes], config.runtime.reply_timeout)
    roster = {}
    for msg in replies:
        if msg.has_error():
            raise StageError(f"handshake: node {msg.metadata.src_node_id} failed: {brief(msg.error.reason)}")
        roster[msg.metadata.src_node_id] = str(msg.content[CONFIG]["site"])
    missing = {s.name for s in config.sites} - set(roster.values())
    if missing or len(set(roster.values())) != len(roster):
        raise StageError(f"handshake: sites missing {sorted(missing)} or answering twice: {sorted(roster.values())}")
    order = [s.name for s in config.sites]  # the configuration's order, not the order the nodes answered in
    return dict(sorted(roster.items(), key=lambda item: order.index(item[1])))


def stage_zero(config: FederationConfig, pool: dict[str, torch.Tensor], seed: int, ckpt: Checkpoints, progress: RunProgress) -> None:
    """MIM-pretrain the encoder on the pool: the baseline encoder, and G_0."""
    model = build_model(config, seed=seed)
    spec = config.inputs[0][1]
    decoder = DecoderHead(model.encoder.widths, spec.channels)
    stats = pretrain_mim(model.encoder, decoder, pool, config.method, seed, progress.phase("stage 0: MIM pretraining on the pool"))
    ckpt.save_stage(0, {"model": model.state_dict(), "mim_decoder": decoder.state_dict()},
                    {"seconds": stats.seconds, "images_per_second": stats.images_per_second, "loss": stats.loss,
                     "pool": {g: len(x) for g, x in pool.items()}})


def message_bytes(msg: Message) -> int:
    """Bytes of the weights a message carries."""
    return sum(len(array.data) for record in msg.content.array_records.values() for array in record.values())


def run_stage(grid: Grid, strategy: UniversalDistillation | SiteHeads, stage: int, state: dict[str, torch.Tensor],
              config: FederationConfig, progress: RunProgress) -> dict[str, torch.Tensor]:
    """One stage of an arm: local training at every site, then the strategy's aggregation; costs go into its report."""
    started = time.perf_counter()
    messages = list(strategy.configure_train(stage, to_arrays(state), ConfigRecord(), grid))
    roster = strategy.roster
    to_sites = {roster[m.metadata.dst_node_id]: message_bytes(m) for m in messages}
    replies = exchange_with_progress(grid, messages, f"{strategy.arm} stage {stage}: local training at {len(messages)} sites",
                                     config, progress)
    nodes = list(roster)  # the server step takes the sites in roster order, not arrival order: same seed, same model
    replies.sort(key=lambda m: nodes.index(m.metadata.src_node_id) if m.metadata.src_node_id in roster else len(nodes))
    from_sites = {roster[m.metadata.src_node_id]: message_bytes(m) for m in replies if not m.has_error()}
    local_seconds = time.perf_counter() - started
    strategy.on_step = progress.phase(f"{strategy.arm} stage {stage}: server aggregation")
    with torch.random.fork_rng(devices=[]):  # dropout in the distillation draws from the global generator: seeded,
        torch.manual_seed(stage_seed(strategy.seed, stage))  # a resumed run (a new process) equals an uninterrupted one
        arrays, _ = strategy.aggregate_train(stage, replies)
    strategy.report.update({"local_seconds": local_seconds, "seconds": time.perf_counter() - started,
                            "bytes_to_sites": to_sites, "bytes_from_sites": from_sites})
    return from_arrays(arrays)


def arm_weights(arm: Arm, ckpt: Checkpoints, last: int) -> Callable[[str], dict[str, torch.Tensor]]:
    """What a site gets for an arm: the stage-0 encoder (fresh head), or an arm's last-stage model for that site
    (only its encoder for a probe)."""
    if arm.weights == "baseline":
        encoder = {k: v for k, v in ckpt.load_stage(0).items() if k.startswith("encoder.")}
        return lambda site: encoder
    state = ckpt.load_stage(last, "model" if arm.weights == "universal" else arm.weights)
    if arm.probe:
        return lambda site: {k: v for k, v in site_state(state, site).items() if k.startswith("encoder.")}
    return lambda site: site_state(state, site)


def evaluate_arm(grid: Grid, roster: dict[int, str], arm: Arm, ckpt: Checkpoints, last: int, seed: int,
                 config: FederationConfig, progress: RunProgress) -> dict[str, dict]:
    """Every site evaluates one arm on its own test split and returns scalar metrics."""
    settings = {"arm": arm.name, "finetune": arm.finetune, "probe": arm.probe, "seed": seed}
    weights_for = arm_weights(arm, ckpt, last)
    messages = [request(MessageType.EVALUATE, n, settings, weights_for(s)) for n, s in roster.items()]
    replies = exchange_with_progress(grid, messages, f"evaluation: {arm.name}", config, progress)
    out, failed = {}, {}
    for msg in replies:
        site = roster[msg.metadata.src_node_id]
        if msg.has_error():
            failed[site] = f"failed: {brief(msg.error.reason)}"
            continue
        out[site] = dict(msg.content[METRICS])
    for site in sorted(set(roster.values()) - set(out) - set(failed)):
        failed[site] = "no reply (dropped out)"
    if len(out) < (config.runtime.min_sites or len(roster)):  # runtime.min_sites (0: every site) must answer
        raise StageError(f"evaluation '{arm.name}': " + "; ".join(f"site '{s}' {why}" for s, why in failed.items()))
    for site, why in failed.items():
        log.warning("evaluation '%s': site '%s' %s", arm.name, site, why)
    return out


def run_competitor(grid: Grid, arm: str, roster: dict[int, str], ckpt: Checkpoints, seed: int,
                   config: FederationConfig, progress: RunProgress) -> None:
    """A comparison arm's stages from the shared MIM model (stage 0), each checkpointed as stage_XXX_ARM."""
    strategy = competitor_strategy(arm, config, roster, seed)
    last = ckpt.last_arm_stage(arm)
    state = ckpt.load_stage(last, "model" if last == 0 else arm)
    for stage in range(last + 1, config.method.stages + 1):
        state = run_stage(grid, strategy, stage, state, config, progress)
        ckpt.save_arm_stage(arm, stage, state, strategy.report)


def run_federation(grid: Grid, config: FederationConfig, run_dir: Path, seed: int, progress: RunProgress,
                   competitors: bool = False, roster: dict[int, str] | None = None) -> None:
    """The whole server flow; each completed stage and arm is checkpointed in run_dir.

    With `competitors`, the comparison arms (FedAvg, FedProx, FedBN) run the same stages from the same
    stage-0 encoder, and their arms and the probes are evaluated too. A `roster` from an earlier handshake
    (the deployed server checks it before writing anything) skips the handshake.
    """
    torch.set_num_threads(config.runtime.server_threads)
    ckpt = Checkpoints(run_dir)
    roster = roster or handshake(grid, config)
    log.info("sites connected: %s", ", ".join(sorted(roster.values())))
    pool = load_pool(config)
    if ckpt.last_stage() is None:
        stage_zero(config, pool, seed, ckpt, progress)
    else:
        log.info("resuming after completed stage %d (%s)", ckpt.last_stage(), ckpt.dir)
    last = ckpt.last_stage()
    decoder = None
    if config.method.mim_weight > 0:
        spec = config.inputs[0][1]
        decoder = DecoderHead(config.model.widths, spec.channels)
        decoder.load_state_dict(ckpt.load_stage(0, "mim_decoder"))
    strategy = UniversalDistillation(config, roster, pool, seed, decoder)
    state = ckpt.load_stage(last)
    for stage in range(last + 1, config.method.stages + 1):
        state = run_stage(grid, strategy, stage, state, config, progress)
        parts = {"model": state, **({"mim_decoder": decoder.state_dict()} if decoder else {})}
        ckpt.save_stage(stage, parts, strategy.report)
    last = config.method.stages
    for arm in config.competitors.federated if competitors else ():
        run_competitor(grid, arm, roster, ckpt, seed, config, progress)
    for arm in arms_for(config, competitors):
        if arm.name not in ckpt.evaluation(last):
            started = time.perf_counter()
            per_site = evaluate_arm(grid, roster, arm, ckpt, last, seed, config, progress)
            ckpt.save_evaluation(arm.name, last, per_site, time.perf_counter() - started)


def make_server_app(config: FederationConfig, run_dir: Path, seed: int, progress: RunProgress,
                    errors: list[BaseException], competitors: bool = False) -> ServerApp:
    """A ServerApp for the Simulation Engine; exceptions are kept in `errors` for the caller to re-raise."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_federation(grid, config, run_dir, seed, progress, competitors)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which re-raises it
            errors.append(exc)
            log.error("run failed: %s", exc)

    return app
