"""Credentials: a CA, the SuperLink's TLS certificate, and per site a node key pair (OpenSSH ECDSA
P-384, registered with the SuperLink) and a TLS certificate for the node's own local API."""

from pathlib import Path
import secrets
import shutil
import socket

from meduniverse.core.config import SITE_NAME
from meduniverse.core.errors import DeployError
from meduniverse.deploy.environment import finish_dir, new_dir, run_tool


def _check_sites(sites: list[str]) -> list[str]:
    if not sites:
        raise DeployError("name at least one site")
    for name in sites:
        if not SITE_NAME.fullmatch(name):
            raise DeployError(f"site name '{name}': use letters, digits, '_' and '-' only")
    if len(set(sites)) != len(sites):
        raise DeployError(f"site names repeat: {sites}")
    return sites


def _san(hosts: list[str]) -> str:
    entries = []
    for host in hosts:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            entries.append(f"IP:{host}")
        except OSError:
            entries.append(f"DNS:{host}")
    return ",".join(entries)


def _certificate(
    directory: Path,
    name: str,
    common_name: str,
    hosts: list[str],
    ca: Path,
    ca_key: Path,
    days: int,
) -> None:
    """`name`.pem + `name`.key: an EC P-256 TLS server certificate for `hosts`, signed by the CA."""
    openssl = shutil.which("openssl") or "openssl"
    key, csr, ext = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.ext"
    run_tool(
        [
            openssl,
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            f"/CN={common_name}",
        ],
        f"openssl (key for {common_name})",
    )
    ext.write_text(
        f"subjectAltName={_san(hosts)}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    run_tool(
        [
            openssl,
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca),
            "-CAkey",
            str(ca_key),
            "-set_serial",
            f"0x{secrets.token_hex(16)}",
            "-days",
            str(days),
            "-sha256",
            "-extfile",
            str(ext),
            "-out",
            str(directory / f"{name}.pem"),
        ],
        f"openssl (certificate for {common_name})",
    )
    csr.unlink()
    ext.unlink()
    key.chmod(0o600)


def generate_credentials(
    out: Path, sites: list[str], hosts: list[str] | None = None, days: int = 365
) -> Path:
    """Everything TLS and node authentication need, one folder per machine:

        OUT/ca.crt, OUT/ca.key          the certificate authority (keep ca.key with the operator,
        offline)
        OUT/server/                     for the server: ca.crt, server.pem, server.key,
        nodes/SITE.pub
        OUT/sites/SITE/                 for each site: ca.crt, node.key + node.pub (its identity,
        registered
                                        with the SuperLink), tls.pem + tls.key (its SuperNode's
                                        local API)

    `hosts`: the names and addresses the SuperLink is reached at (its certificate's subjectAltName).

    Args:
        out: a new directory (an existing non-empty one is refused; nothing is written on failure).
        sites: the sites' names.
        hosts: the names and addresses the SuperLink is reached at (its certificate's SANs).
        days: validity of the certificates.
    """
    sites = _check_sites(list(sites))
    hosts = list(hosts or ["127.0.0.1", "localhost"])
    out = Path(out)
    tmp = new_dir(out)
    try:
        ca, ca_key = tmp / "ca.crt", tmp / "ca.key"
        openssl = shutil.which("openssl")
        keygen = shutil.which("ssh-keygen")
        if not openssl or not keygen:
            raise DeployError(
                "generating credentials needs 'openssl' and 'ssh-keygen' (OpenSSH) on PATH"
            )
        run_tool(
            [
                openssl,
                "req",
                "-x509",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                str(ca_key),
                "-out",
                str(ca),
                "-days",
                str(days),
                "-sha256",
                "-subj",
                "/CN=meduniverse federation CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            "openssl (certificate authority)",
        )
        ca_key.chmod(0o600)
        server = tmp / "server"
        (server / "nodes").mkdir(parents=True)
        shutil.copy(ca, server / "ca.crt")
        _certificate(server, "server", "meduniverse-superlink", hosts, ca, ca_key, days)
        for site in sites:
            folder = tmp / "sites" / site
            folder.mkdir(parents=True)
            shutil.copy(ca, folder / "ca.crt")
            run_tool(
                [
                    keygen,
                    "-q",
                    "-t",
                    "ecdsa",
                    "-b",
                    "384",
                    "-N",
                    "",
                    "-C",
                    f"meduniverse site {site}",
                    "-f",
                    str(folder / "node"),
                ],
                f"ssh-keygen (key for site '{site}')",
            )
            (folder / "node").rename(folder / "node.key")
            shutil.copy(folder / "node.pub", server / "nodes" / f"{site}.pub")
            _certificate(
                folder,
                "tls",
                f"meduniverse-site-{site}",
                ["127.0.0.1", "localhost"],
                ca,
                ca_key,
                days,
            )
        (tmp / "README.txt").write_text(
            "server/ goes to the server machine; sites/SITE/ to site SITE only; ca.key stays with "
            "the operator.\n"
            f"Sites: {', '.join(sites)}. SuperLink certificate valid for: {', '.join(hosts)}.\n"
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return finish_dir(tmp, out)
