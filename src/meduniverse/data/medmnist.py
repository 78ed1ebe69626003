"""Files of the official ``medmnist`` package, found by dataset name in a local root folder."""

from pathlib import Path

from meduniverse.core.errors import DataError


def medmnist_file(name: str, root: Path, size: int = 28) -> Path:
    """Path of ``{name}.npz`` (28 px) or ``{name}_{size}.npz`` under root, downloading it if it is
    missing.

    The download uses the optional ``medmnist`` package; offline it fails with an error that
    names the root folder to put the file in.
    """
    root = Path(root).expanduser()
    filename = f"{name}.npz" if size == 28 else f"{name}_{size}.npz"
    path = root / filename
    if path.is_file():
        return path
    hint = f"put {filename} (from https://zenodo.org/records/10519652) into {root}"
    try:
        import medmnist  # optional extra; hard-requires torchvision
        from medmnist import INFO
    except Exception as exc:
        raise DataError(
            f"{path}: MedMNIST file not found and the 'medmnist' package is unavailable ({exc}); "
            f"install meduniverse[medmnist] to download it, or {hint}"
        ) from exc
    if name not in INFO:
        raise DataError(
            f"{path}: '{name}' is not a MedMNIST dataset (known: {', '.join(sorted(INFO))})"
        )
    root.mkdir(parents=True, exist_ok=True)
    dataset_class = getattr(medmnist, INFO[name]["python_class"])
    try:
        dataset_class(split="test", root=str(root), download=True, size=size)
    except Exception as exc:
        raise DataError(
            f"{path}: could not download MedMNIST '{name}' ({exc}); offline? {hint}"
        ) from exc
    if not path.is_file():
        raise DataError(f"{path}: download finished but the file is not there; {hint}")
    return path
