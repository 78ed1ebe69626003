"""Checks before a deployment step starts: the SuperLink answers over TLS with a certificate the CA
vouches for, and a site's data file has the layout a node needs."""

from pathlib import Path
import ssl
import time
import urllib.error
import urllib.request

from meduniverse.core.errors import DataError, DeployError
from meduniverse.data.npz import open_npz
from meduniverse.data.splits import SPLITS


def existing_file(path: Path | str, what: str) -> Path:
    """The resolved path of a file that must exist; DeployError naming `what` otherwise."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DeployError(f"{what} {path} not found")
    return path


def check_superlink(address: str, ca: Path, wait: float = 0.0) -> None:
    """The SuperLink answers on `address` over TLS with a certificate the CA file vouches for.

    Connection errors are retried for `wait` seconds; a certificate that does not verify is not."""
    ca = existing_file(ca, "CA certificate")
    try:
        context = ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError as exc:
        raise DeployError(
            f"CA certificate {ca} is not a PEM certificate ({exc.reason or exc})"
        ) from exc
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(
                f"https://{address}/health", context=context, timeout=10
            ) as response:
                if response.status == 200:
                    return
                raise DeployError(
                    f"the SuperLink at {address} answered /health with HTTP {response.status}"
                )
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise DeployError(
                    f"the SuperLink at {address} presented a certificate that {ca} does not vouch "
                    "for "
                    f"({reason.verify_message}): wrong certificate, or wrong CA file"
                ) from exc
            if isinstance(reason, ssl.SSLError):
                raise DeployError(
                    f"TLS with the SuperLink at {address} failed ({reason.reason or reason}): "
                    f"is it started with TLS (not --insecure)?"
                ) from exc
            if time.monotonic() >= deadline:
                raise DeployError(
                    f"cannot reach the SuperLink at {address}: {reason} "
                    f"(is it running, and are the host and port right?)"
                ) from exc
        except (ConnectionError, TimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise DeployError(f"cannot reach the SuperLink at {address}: {exc}") from exc
        time.sleep(0.5)


def check_site_data(site: str, data: Path | str) -> Path:
    """A site's own data exists: an npz file holding train/val/test images with labels or masks
    (MedMNIST layout), or a folder of its own files (checked when the node reads it)."""
    path = Path(data).expanduser().resolve()
    if path.is_dir():
        return path
    if not path.is_file():
        raise DataError(f"site '{site}': data file {path} not found")
    with open_npz(path) as npz:
        keys = set(npz.files)
    for split in SPLITS:
        if f"{split}_images" not in keys or not {f"{split}_labels", f"{split}_masks"} & keys:
            raise DataError(
                f"site '{site}': {path} lacks '{split}_images' with '{split}_labels' or "
                f"'{split}_masks' (has {sorted(keys)})"
            )
    return path
