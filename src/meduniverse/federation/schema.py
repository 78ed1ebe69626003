"""What a site may send, per message type: exact metric keys with their types, the site model's own
weights where the protocol sends weights, and fixed error codes instead of free text.

The ClientApp checks every reply against this before it leaves (`check_reply` in `messages.reply`),
and the server checks every reply it receives against it again: a leak dressed as scalars (extra
metrics, per-example outputs, a label histogram, an image as numbers), an image in a head's weights
(values far beyond the weights sent) or data in an error's text is refused on both sides. What no
schema can exclude is information hidden at small amplitude in the weights themselves; differential
privacy is the remedy for that.
"""

from dataclasses import dataclass
import re

import torch

from meduniverse.core.config import SITE_NAME
from meduniverse.core.tasks import task_type
from meduniverse.models.universal import PERSONAL_PREFIX

QUERY, TRAIN, EVALUATE = "query", "train", "evaluate"
ERROR_CODES = {
    "data": 1001,
    "stage": 1002,
    "resources": 1003,
    "privacy": 1004,
    "internal": 1005,
}  # not Flower's
WEIGHT_RANGE = 10.0  # a sent weight may be at most this many times the largest weight received, +1
COUNTS = ("num-train", "num-val", "num-test")


@dataclass(frozen=True)
class Schema:
    """A message type's reply: required and optional metric keys (int-valued ones named), whether it
    carries weights, and its text fields."""

    required: frozenset[str]
    optional: frozenset[str] = frozenset()
    integers: frozenset[str] = frozenset()
    weights: bool = False
    info: frozenset[str] = frozenset()
    outputs: bool = False


def schema(message_type: str, task: str, transfer: str = "weights") -> Schema:
    """The reply schema of a message type for a site of task type `task`; with `transfer`
    'outputs' (strict transfer), a training reply carries the site model's outputs on the pool
    images it was sent instead of its weights; with 'secure' (phase A of a secure aggregation
    stage) neither: the site keeps its model and the weights travel masked in phase B."""
    kind = task_type(task)
    key, second = kind.primary, kind.secondary
    if message_type == QUERY:
        return Schema(
            frozenset(COUNTS), integers=frozenset(COUNTS), info=frozenset({"site", "task"})
        )
    if message_type == TRAIN:
        required = {
            "num-examples",
            "train-loss",
            "train-seconds",
            "train-images-per-second",
            f"received-val-{key}",
            f"val-{key}",
            f"test-{key}",
        }
        # with privacy.dp: what the site has spent so far; with method.teachers = 'best': 1 if the
        # teacher the site kept from the stage before won
        optional = frozenset({"dp-epsilon", "kept-teacher"})
        return Schema(
            frozenset(required),
            optional,
            frozenset({"num-examples", "kept-teacher"}),
            weights=transfer == "weights",
            outputs=transfer == "outputs",
        )
    if message_type == EVALUATE:
        required = {
            "num-examples",
            "seconds",
            *(f"{s}-{m}" for s in ("val", "test") for m in (key, second)),
        }
        optional = {"best-epoch", "epochs"}
        return Schema(
            frozenset(required), frozenset(optional), frozenset({"num-examples", *optional})
        )
    raise ValueError(f"no reply schema for message type '{message_type}'")


def metric_problems(found: dict, expected: Schema) -> list[str]:
    """Why metrics break the schema: missing or unexpected keys (counted, never named: a key name
    could itself carry data), wrong types."""
    problems = []
    missing, extra = (
        expected.required - set(found),
        set(found) - expected.required - expected.optional,
    )
    if missing:
        problems.append(f"{len(missing)} required metric(s) missing")
    if extra:
        problems.append(f"{len(extra)} metric(s) the protocol does not send")
    for name, value in found.items():
        if name in extra:
            continue
        if name in expected.integers:
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"metric '{name}' must be an integer")
        elif not isinstance(value, float | int) or isinstance(value, bool):
            problems.append(f"metric '{name}' must be a number")
    return problems


def weight_problems(found: dict[str, torch.Tensor], sent: dict[str, torch.Tensor]) -> list[str]:
    """Why weights break the protocol: not exactly the site model's keys (its personal copy too,
    for Ditto), other shapes, or values beyond WEIGHT_RANGE times the largest weight sent (+1)."""
    allowed = {**sent, **{f"{PERSONAL_PREFIX}{k}": v for k, v in sent.items()}}
    if not set(sent) <= set(found) or not set(found) <= set(allowed):
        return [f"weights are not the site model's own ({len(set(found) ^ set(sent))} keys differ)"]
    problems = []
    for name, value in found.items():
        reference = allowed[name]
        if value.shape != reference.shape or not value.is_floating_point():
            problems.append(
                f"weights '{name}' have shape {tuple(value.shape)}, expected "
                f"{tuple(reference.shape)}"
            )
            continue
        bound = WEIGHT_RANGE * float(reference.abs().max()) + 1.0
        top = float(value.abs().max()) if value.numel() else 0.0
        if not torch.isfinite(value).all():
            problems.append(f"weights '{name}' hold NaN or inf")
        elif top > bound:
            problems.append(f"weights '{name}' reach {top:.3g}, beyond {bound:.3g}")
    return problems


def output_problems(found: torch.Tensor, shape: tuple[int, ...]) -> list[str]:
    """Why pool outputs break the protocol: not float16 logits of the expected shape (one row per
    pool image sent), or not finite."""
    if found.dtype != torch.float16 or tuple(found.shape) != tuple(shape):
        return [f"outputs are {found.dtype} {tuple(found.shape)}, expected float16 {tuple(shape)}"]
    if not torch.isfinite(found).all():
        return ["outputs hold NaN or inf"]
    return []


def check_reply(
    message_type: str,
    task: str,
    metrics: dict,
    info: dict | None,
    weights: dict[str, torch.Tensor] | None,
    sent: dict[str, torch.Tensor] | None,
    outputs: torch.Tensor | None = None,
    outputs_shape: tuple[int, ...] | None = None,
    transfer: str = "weights",
) -> list[str]:
    """Every way a reply breaks its schema (empty: it conforms).

    Args:
        message_type: 'query', 'train' or 'evaluate'.
        task: the site's task type.
        metrics: the reply's scalar metrics.
        info: its text fields (None: none).
        weights: its weights (None: none).
        sent: the weights the server sent for the site's model (train replies).
        outputs: its outputs on the pool (None: none).
        outputs_shape: with strict transfer, the shape its outputs must have (None: the reply
            must carry weights, not outputs).
        transfer: 'secure' for a reply that carries neither weights nor outputs (phase A of a
            secure aggregation stage); otherwise `outputs_shape` decides.
    """
    expected = schema(message_type, task, "outputs" if outputs_shape is not None else transfer)
    problems = metric_problems(metrics, expected)
    if set(info or {}) != expected.info:
        problems.append("text fields are not the protocol's")
    if (weights is not None) != expected.weights:
        problems.append(
            "weights where the protocol sends none" if weights is not None else "weights missing"
        )
    elif weights is not None:
        problems += weight_problems(weights, sent or {})
    if (outputs is not None) != expected.outputs:
        problems.append(
            "outputs where the protocol sends none" if outputs is not None else "outputs missing"
        )
    elif outputs is not None and outputs_shape is not None:
        problems += output_problems(outputs, outputs_shape)
    return problems


ERROR_REASON = re.compile(  # a site's name (or '?' before it is known) and a fixed code
    rf"site '(?:{SITE_NAME.pattern}|\?)': (?:" + "|".join(ERROR_CODES) + r") error \(code \d+\)"
)


def error_reason(site: str, code: str) -> str:
    """The only text an error reply carries: the site's name and a fixed code."""
    return f"site '{site}': {code} error (code {ERROR_CODES[code]})"
