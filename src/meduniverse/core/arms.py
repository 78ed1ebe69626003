"""The comparison arms, in one registry.

A *model* is a set of weights that some process trains: the stage-0 MIM encoder, the universal
model, each federated competitor, the centralised ceiling. An *arm* is what every site scores on its
own test split: one model as is, fine-tuned per task, or probed (its encoder frozen, a fresh head
trained). Adding an arm is one entry in `ARMS` (and, for a new federated model, one entry in
`MODELS` plus its strategy in `meduniverse.federation.competitors.STRATEGIES`).
"""

from collections.abc import Iterable
from dataclasses import dataclass

FEDERATED, POOLED, MIM = "federated", "pooled", "mim"
AS_IS, FINETUNE, PROBE = "as_is", "finetune", "probe"


@dataclass(frozen=True)
class Model:
    """Weights an arm starts from.

    Args:
        name: the model's name; also the checkpoint part its stages are saved under (``model`` for
            ours).
        training: ``mim`` (stage 0 on the pool), ``federated`` (stages 1..S on Flower, the same
            stages and local epochs for every federated model) or ``pooled`` (every site's data in
            one process: a reference that privacy forbids, run by ``meduniverse experiment`` only).
        description: one line for results.json and the report.
        settings: configuration fields (section.key) that belong to its budget beyond the shared
            ones.
        personal: its sites are evaluated with their personal models (Ditto), not the global one.
    """

    name: str
    training: str
    description: str
    settings: tuple[str, ...] = ()
    personal: bool = False


@dataclass(frozen=True)
class Arm:
    """What the sites evaluate.

    Args:
        name: the arm's name in results.json.
        model: the `Model` whose weights the sites get (its encoder and the site's head).
        mode: ``as_is``, ``finetune`` (encoder + head, early stopping on validation) or ``probe``
            (encoder frozen, a fresh head); every fine-tune and probe runs the same `finetune()`
            schedule.
        same_as: another arm whose computation this one is, reported under both names.
        description: one line for results.json and the report.
    """

    name: str
    model: str
    mode: str = AS_IS
    same_as: str | None = None
    description: str = ""


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model("baseline", MIM, "MIM encoder (stage 0)"),
        Model("universal", FEDERATED, "the universal model: one encoder, one head per task"),
        Model("fedavg", FEDERATED, "Flower FedAvg of the encoder, heads local"),
        Model(
            "fedprox",
            FEDERATED,
            "Flower FedProx of the encoder, heads local",
            ("competitors.proximal_mu",),
        ),
        Model(
            "fedbn",
            FEDERATED,
            "FedAvg of the encoder except its normalisation layers (site-local), heads local",
        ),
        Model(
            "ditto",
            FEDERATED,
            "Ditto: FedAvg of the encoder and heads local, plus a personal model per site pulled "
            "towards the global one (two local updates a stage); each site's personal model",
            ("competitors.ditto_lambda",),
            personal=True,
        ),
        Model(
            "fedrep",
            FEDERATED,
            "FedRep: the site's head trained first on the received encoder, then the encoder, "
            "which FedAvg averages; heads local",
        ),
        Model(
            "centralized",
            POOLED,
            "all sites' data pooled, multi-task training from the MIM encoder "
            "(the ceiling privacy forbids)",
        ),
    )
}
COMPETITORS: tuple[str, ...] = tuple(
    m for m, spec in MODELS.items() if spec.training == FEDERATED and m != "universal"
)

ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm(
            "baseline",
            "baseline",
            FINETUNE,
            description="MIM encoder (stage 0), fine-tuned per task with early stopping",
        ),
        Arm(
            "local",
            "baseline",
            FINETUNE,
            same_as="baseline",
            description="each site alone from the MIM encoder, fine-tuned with the same "
            "early-stopped schedule "
            "(the same computation as baseline: with equal budgets the two arms coincide)",
        ),
        Arm(
            "universal",
            "universal",
            description="the universal model as is: one encoder, one head per task",
        ),
        Arm(
            "universal_finetuned",
            "universal",
            FINETUNE,
            description="the universal encoder + head, fine-tuned per task with early stopping",
        ),
        *(Arm(m, m, description=f"{MODELS[m].description}, as is") for m in COMPETITORS),
        Arm(
            "centralized", "centralized", description=f"{MODELS['centralized'].description}, as is"
        ),
        *(
            Arm(
                f"{m}_finetuned",
                m,
                FINETUNE,
                description=f"{MODELS[m].description}, then its encoder + the site's head "
                "fine-tuned per task with early stopping",
            )
            for m in (*COMPETITORS, "centralized")
        ),
        *(
            Arm(
                f"{m}_probe",
                m,
                PROBE,
                description=f"{m} encoder frozen, a fresh head per task trained with the "
                "fine-tune schedule (linear-probe style)",
            )
            for m in MODELS
        ),
    )
}
METHOD_ARMS: tuple[str, ...] = ("baseline", "universal", "universal_finetuned")


def arm(name: str) -> Arm:
    """The registered arm `name`; raises KeyError listing the known ones."""
    try:
        return ARMS[name]
    except KeyError:
        raise KeyError(f"arm '{name}' unknown (known: {', '.join(ARMS)})") from None


def arm_order(names: Iterable[str]) -> list[str]:
    """Registry order first, unknown names after, alphabetically."""
    rank = {n: i for i, n in enumerate(ARMS)}
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))


def describe_arm(name: str) -> str:
    return ARMS[name].description if name in ARMS else name


def selected_arms(
    federated: Iterable[str],
    probes: Iterable[str],
    finetuned: Iterable[str],
    centralized: bool,
    competitors: bool,
) -> list[Arm]:
    """The arms of a run: the method's; with `competitors`, each federated competitor as is, the
    probes and fine-tuned arms of the listed models, the centralised arms and the aliases of
    computed arms.

    Args:
        federated: the federated competitors trained (model names).
        probes: the models whose encoders are probed.
        finetuned: the competitors (and 'centralized') whose encoder + head are also fine-tuned.
        centralized: whether the pooled reference runs.
        competitors: False for the method's arms only (`meduniverse run`).
    """
    names = list(METHOD_ARMS)
    if competitors:
        trained = {*federated, *(["centralized"] if centralized else [])}
        names += [
            *federated,
            *(f"{m}_probe" for m in probes),
            *(["centralized"] if centralized else []),
            *(f"{m}_finetuned" for m in finetuned if m in trained),
        ]
        names += [a.name for a in ARMS.values() if a.same_as in names]
    return [ARMS[n] for n in arm_order(names)]


def computed_in_federation(a: Arm) -> bool:
    """Whether the sites compute this arm in the federation's evaluation (not an alias, not a pooled
    model's)."""
    return a.same_as is None and MODELS[a.model].training != POOLED
