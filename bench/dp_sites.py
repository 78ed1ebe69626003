"""Where DP-SGD's price is paid: one stage of each site's local training from the MIM encoder, with
and without DP, scored on the site's val split, beside the noise the site's budget buys; writes
bench/results/dp_sites.json.

    python bench/dp_sites.py [--config CONFIG] [--epsilon 8] [--sites a,b] [--set KEY=VALUE ...]

The same settings as bench/privacy.py's rows (fixed `local_epochs`, the DP row's batch and learning
rate), stage 1 of `method.stages`, seed `seed`. Per site: n, the expected DP batch B, the sampling
rate, steps, the noise multiplier sigma that spends epsilon over every stage, the parameters DP-SGD
trains (d), and sigma / B: the standard deviation, per coordinate and in units of the clipping
norm, of the noise on each step's averaged gradient, whose signal is at most one clipping norm in
all (so sigma * sqrt(d) / B is the noise's norm per unit of signal at best). Without --config the
bundled synthetic demo is used.
"""

import argparse
from pathlib import Path
import sys
import time

import torch

from meduniverse.core.config import FederationConfig
from meduniverse.core.config_file import load_config
from meduniverse.core.device import Compute
from meduniverse.core.tasks import task_type
from meduniverse.federation.client_app import site_model
from meduniverse.interfaces.cli import demo_config_path
from meduniverse.method.mim import mim_model
from meduniverse.method.private import dp_schedule, expected_batch, train_private, used_parameters
from meduniverse.method.site import stage_method, train_site
from meduniverse.method.supervised import evaluate
from meduniverse.models.universal import encoder_part
from meduniverse.sites.pool import build_pool
from meduniverse.sites.sources import load_site
from privacy import dp_settings
from rows import write_rows

ROOT = Path(__file__).resolve().parents[1]


def mim_encoder(config: FederationConfig) -> dict[str, torch.Tensor]:
    """G_0: the encoder MIM-pretrained on the pool, as stage 0 of a run makes it."""
    torch.set_num_threads(config.runtime.server_threads)
    with Compute.of(config.runtime).autocast():
        model, _, _ = mim_model(config, build_pool(config).images, config.seed)
    return encoder_part(model.state_dict())


def site_row(plain: FederationConfig, private: FederationConfig, name: str, start: dict) -> dict:
    """One site: its noise figures and its val metric untrained, after a stage without DP and after
    one with DP (each from the same start)."""
    site = next(s for s in plain.sites if s.name == name)
    data = load_site(site, plain.pool, plain.input_spec(site.task), plain.seed)
    train, val, key = data.splits["train"], data.splits["val"], task_type(site.task).primary
    method, privacy, n = stage_method(private.method, 1), private.privacy, len(train)
    rate, steps, sigma = dp_schedule(site.task, n, method, privacy)
    expected = expected_batch(rate, n)
    row = {"site": name, "task": site.task, "metric": key, "n": n, "val_n": len(val)}
    row |= {"batch": expected, "rate": rate, "steps_per_stage": steps, "stages": method.stages}
    trained = sum(
        p.numel()
        for p in used_parameters(
            site_model(private, data, start, plain.seed), name, train, privacy.dp_trains
        )
    )
    row |= {"sigma": sigma, "trained_parameters": trained, "noise_per_clip": sigma / expected}
    row["noise_norm_per_clip"] = sigma * trained**0.5 / expected
    torch.set_num_threads(plain.runtime.threads_per_site)
    for arm in ("untrained", "without_dp", "with_dp"):
        model, began = site_model(plain, data, start, plain.seed), time.perf_counter()
        if arm == "without_dp":
            with Compute.of(plain.runtime).autocast():
                train_site(
                    model,
                    name,
                    data.splits,
                    stage_method(plain.method, 1),
                    plain.finetune,
                    plain.seed,
                )
        elif arm == "with_dp":
            train_private(model, name, train, method, privacy, plain.seed, 1)
        row[arm] = {"val": evaluate(model, name, val)[key], "seconds": time.perf_counter() - began}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--epsilon", default="8")
    parser.add_argument("--sites", default=None, help="comma-separated (default: every site)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--result", type=Path, default=ROOT / "bench" / "results" / "dp_sites.json")
    args = parser.parse_args()
    path = args.config or demo_config_path()
    plain = load_config(path, [*args.overrides, *dp_settings("none")])
    private = load_config(path, [*args.overrides, *dp_settings(args.epsilon)])
    names = args.sites.split(",") if args.sites else [s.name for s in plain.sites]
    unknown = set(names) - {s.name for s in plain.sites}
    if unknown:
        sys.exit(f"dp_sites: no site {sorted(unknown)} in {path}")
    start, rows = mim_encoder(plain), []
    for name in names:
        rows.append({"epsilon": args.epsilon, **site_row(plain, private, name, start)})
        r = rows[-1]
        print(
            f"{name}: n={r['n']} sigma/B={r['noise_per_clip']:.4f} val untrained "
            f"{r['untrained']['val']:.3f}, without DP {r['without_dp']['val']:.3f}, with DP "
            f"{r['with_dp']['val']:.3f}",
            flush=True,
        )
        write_rows(args.result, __doc__, "dp_sites.py", args.config, plain.seed, rows)


if __name__ == "__main__":
    main()
