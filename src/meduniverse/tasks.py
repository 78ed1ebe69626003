"""Task types and what follows from them: output width, loss family, primary metric."""

TASK_TYPES: tuple[str, ...] = ("binary", "multiclass", "ordinal", "multilabel", "segmentation")


def is_segmentation(task: str) -> bool:
    return task == "segmentation"


def num_outputs(task: str, num_classes: int) -> int:
    """Logit channels of a head: 1 for binary, C-1 cumulative thresholds for ordinal, else C."""
    if task == "binary":
        return 1
    if task == "ordinal":
        return num_classes - 1
    return num_classes


def primary_metric(task: str) -> str:
    return "dice" if is_segmentation(task) else "auc"


def secondary_metric(task: str) -> str:
    return "iou" if is_segmentation(task) else "acc"


def spec_group(task: str) -> str:
    """Which input specification a task uses: 'segmentation' or 'classification'."""
    return "segmentation" if is_segmentation(task) else "classification"
