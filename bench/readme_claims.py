"""README sections on the claim, speed, extension and privacy, generated from bench/results/*.json.

Used by readme_results.py: the line that states which of the claim's targets hold (from the
3-seed experiment), the one-seed screening of the levers (ablation.json) and the performance
figures (speed.json).
"""

from collections.abc import Callable
from statistics import mean

from dp_screen import overrides
from meduniverse.results.model_card import markdown_table
from processors import MACHINE, NAME, SUFFIX, kinds, processor

ARMS = ("baseline", "universal", "universal_finetuned")  # the method's arms, in table order


def _arm(task: dict, arm: str) -> float | None:
    entry = task["arms"].get(arm)
    return None if entry is None else entry["mean"]


def _unseen(doc: dict) -> str:
    """Target 5 on the unseen sites that have adaptation results: universal ahead of the MIM
    encoder at 1% and 10% labels, probe and fine-tune."""
    parts = []
    for site, entry in doc.get("adapt_results", {}).items():
        arms = entry["arms"]
        checks = [
            arms[f"universal_{m}@{f}"]["mean"] > arms[f"baseline_{m}@{f}"]["mean"]
            for m in ("probe", "finetune")
            for f in ("0.01", "0.1")
            if f"universal_{m}@{f}" in arms and f"baseline_{m}@{f}" in arms
        ]
        parts.append(f"{site} {sum(checks)} of {len(checks)} ahead")
    return "; ".join(parts) if parts else "no adaptation results"


def _ceiling(doc: dict | None) -> str:
    """Target 6 from a smaller experiment (the competitors' one) while the 3-seed one lacks it."""
    if doc is None:
        return "arm built, not yet in this experiment"
    tasks = doc["tasks"].values()
    ours = mean(_arm(t, "universal_finetuned") for t in tasks)
    ceiling = mean(_arm(t, "centralized_finetuned") for t in tasks)
    return (
        f"not in this experiment; in `competitors.json` ({len(doc['seeds'])} seed) "
        f"{ceiling:.3f} against universal_finetuned {ours:.3f}"
    )


def targets_line(doc: dict, smaller: dict | None = None) -> str:
    """One line: which of the claim's targets (issue 10) hold in this experiment's test means
    (`smaller`: an experiment with fewer seeds that has the centralised ceiling)."""
    tasks = doc["tasks"]
    universal = {s: _arm(t, "universal") for s, t in tasks.items()}
    baseline = {s: _arm(t, "baseline") for s, t in tasks.items()}
    ahead = sum(universal[s] >= baseline[s] for s in tasks)
    m_u, m_b = mean(universal.values()), mean(baseline.values())
    t1 = m_u >= m_b and ahead >= 6
    test = doc["tests"].get("universal_finetuned_vs_baseline", {})
    t2 = test.get("wilcoxon_p", 1.0) < 0.01 and test.get("wins", 0) >= 18
    gaps = [t["fidelity"]["universal_minus_teacher"] for t in tasks.values() if "fidelity" in t]
    t3 = bool(gaps) and min(gaps) >= -0.01
    thin = tasks.get("drive_vessels")
    t4 = thin is not None and _arm(thin, "universal") >= _arm(thin, "baseline")
    ceiling = [_arm(t, "centralized_finetuned") for t in tasks.values()]
    word = {True: "holds", False: "not met"}
    return (
        f"**Targets of the claim** (test means, {len(doc['seeds'])} seeds): "
        f"1. universal >= baseline: {word[t1]} ({m_u:.3f} vs {m_b:.3f}, ahead on {ahead} of "
        f"{len(tasks)}); "
        f"2. universal_finetuned vs baseline p < 0.01 with 18 wins: {word[t2]} "
        f"(p = {test.get('wilcoxon_p', float('nan')):.2g}, {test.get('wins', 0)} wins); "
        f"3. universal within 0.01 of its teacher on every task: {word[t3]} "
        f"({sum(g >= -0.01 for g in gaps)} of {len(gaps)}, worst {min(gaps, default=0):+.3f}); "
        f"4. DRIVE universal >= baseline: {word[t4]}"
        + (f" ({_arm(thin, 'universal'):.3f} vs {_arm(thin, 'baseline'):.3f})" if thin else "")
        + f"; 5. unseen sites: {_unseen(doc)}"
        + (
            ""
            if any(e.get("left_out") for e in doc.get("adapt_results", {}).values())
            else " (leave-one-site-out runs not made yet)"
        )
        + "; "
        "6. centralized_finetuned: "
        + (
            f"mean {mean(ceiling):.3f}"
            if all(c is not None for c in ceiling)
            else _ceiling(smaller)
        )
        + "."
    )


def screening_table(doc: dict) -> list[str]:
    """One-seed screening of the levers: validation and test means, teachers, fidelity gap, time."""
    arms_shown = ("universal", "universal_finetuned", "baseline")
    rows = []
    for row in doc["runs"]:
        arms, stages = row["arms"], row["stages"]
        teachers = stages[max(stages, key=int)]["teacher_val"] if stages else float("nan")
        pairs = [
            f"{arms[a]['val']:.3f} / {arms[a]['test']:.3f}" if a in arms else "-"
            for a in arms_shown
        ]
        changed = ", ".join(f"`{k}={v}`" for k, v in row["changes"].items()) or "none"
        seconds = row.get("run_seconds")
        compute = row.get("compute")  # runs before 9549bbf: fp32 on AVX2 machines
        precision = f", {compute['precision']}" if compute else ""
        rows.append(
            [
                f"{row['run']} (`{row['commit'][:7]}`{precision})",
                changed,
                f"{teachers:.3f}",
                *pairs,
                f"{row['fidelity_gap_val']:.3f}",
                f"{seconds / 60:.0f} min" if seconds else "-",
            ]
        )
    header = ["run", "changes against `configs/shared8.toml`", "last-stage teachers (val)"]
    header += [f"{a} (val / test)" for a in arms_shown]
    return markdown_table([*header, "fidelity gap (val)", "run time"], rows)


def speed_lines(doc: dict) -> list[str]:
    """The machine's peak, each phase's share of it, the variants and the federation overhead."""
    peak = doc["peak"]
    lines = [
        f"Measured peak of an AVX2 machine (a 2048x2048 fp32 matrix product): fp32 "
        f"{peak['float32_1_threads_gflops']:.0f} GFLOP/s on 1 thread, "
        f"{peak['float32_2_threads_gflops']:.0f} on 2; bf16 "
        f"{peak['bfloat16_2_threads_gflops']:.1f} on 2 (far below fp32 on these AVX2 cores, so "
        f"`runtime.precision = 'auto'` stays fp32 on them). `bench/results/speed.json` "
        f"(`{doc['phases']['command']}`, commit "
        f"`{doc['phases']['commit'][:7]}`):",
        "",
        *phases_table(doc["phases"]["rows"]),
        "",
        *variants_table(doc["variants"]["rows"]),
    ]
    lines += [*processor_lines(doc, "amx"), *processor_lines(doc, "avx512")]
    for config in ("demo", "shared8"):
        for kind, over in kinds(doc, f"overhead_{config}"):
            where = f" on {MACHINE[kind]}" if MACHINE[kind] else ""
            lines += [
                "",
                f"Federation overhead on `{config}`{where} (`{over['command']}`, commit "
                f"`{over['commit'][:7]}`): the same stages and arms as a plain in-process loop "
                f"{over['plain_loop_seconds']:.1f} s, under Flower's Simulation Engine "
                f"{over['flower_seconds']:.1f} s: ratio {over['ratio']:.2f} (target 1.15), "
                f"{over['flower_seconds'] - over['plain_loop_seconds']:+.1f} s."
                + local_training_note(over),
            ]
    for kind, scaling in [k for part in ("scaling", "scaling_disk") for k in kinds(doc, part)]:
        where = f" on {MACHINE[kind]} (bf16)" if MACHINE[kind] else ""
        lines += scaling_lines(scaling, where)
    return lines


def phases_table(rows: list[dict]) -> list[str]:
    """Each phase's time, work, rate and share of the machine's peak."""
    cells = [
        [
            r["phase"],
            str(r["threads"]),
            f"{r['seconds']:.1f}",
            f"{r['gflop']:.0f}",
            f"{r['gflops_per_second']:.0f}",
            f"{r['share_of_peak']:.0%}",
        ]
        for r in rows
    ]
    header = ["phase", "threads", "seconds", "GFLOP", "GFLOP/s", "share of peak"]
    return markdown_table(header, cells)


def local_training_note(over: dict) -> str:
    """Where the two sides differ most: the sites' local training, summed over the stages."""
    loop, flower = (
        sum(v for k, v in (over.get(side) or {}).items() if k.endswith("_local"))
        for side in ("plain_loop_phases", "flower_phases")
    )
    if not (loop and flower):
        return ""
    return (
        f" The sites' local training, every stage: plain loop {loop:.0f} s (one site after another "
        f"on every thread), Flower {flower:.0f} s (`runtime.parallel_sites` at once, "
        f"`runtime.threads_per_site` thread each)."
    )


def variants_table(rows: list[dict]) -> list[str]:
    cells = [
        [
            r["variant"],
            f"{r['size']} px, batch {r['batch']}",
            f"{r['images_per_second']:.0f}",
            f"{r['first_step_seconds']:.1f}",
        ]
        for r in rows
    ]
    header = ["variant", "input", "images/s (train, 2 threads)", "first step (s)"]
    return markdown_table(header, cells)


PROCESSOR_PARTS = (
    "peak",
    "variants",
    "phases_fp32",
    "phases_bf16",
    "precision",
    "allocator",
    "allocator_warm",
    "arena",
    "distill_steps",
    "server_memory",
)


def processor_lines(doc: dict, kind: str) -> list[str]:
    """What speed.json holds for one kind of processor with bf16 arithmetic (`SUFFIX`), where
    `runtime.precision = 'auto'` picks bf16: its peak and the training-step variants, every phase
    at both precisions, a default shared8 seed against the fp32 seeds, and a server step with
    malloc's defaults against freed memory kept."""
    part = {name: doc.get(name + SUFFIX[kind]) for name in PROCESSOR_PARTS}
    peak, variants = part["peak"], part["variants"]
    if not (peak and variants):
        return []
    return [
        "",
        f"On {NAME[kind]} (`{variants['command']}`, commit `{variants['commit'][:7]}`), where "
        "`runtime.precision = 'auto'` picks bf16: peak fp32 "
        f"{peak['float32_2_threads_gflops']:.0f} GFLOP/s on 2 threads, bf16 "
        f"{peak['bfloat16_2_threads_gflops']:.0f}.",
        "",
        *variants_table(variants["rows"]),
        *phase_pair_lines(part["phases_fp32"], part["phases_bf16"]),
        *precision_lines(part["precision"]),
        *allocator_lines(part["allocator"]),
        *allocator_lines(part["allocator_warm"]),
        *arena_lines(part["arena"]),
        *distill_steps_lines(part["distill_steps"]),
        *server_memory_lines(part["server_memory"]),
    ]


def phase_pair_lines(fp32: dict | None, bf16: dict | None) -> list[str]:
    """Every phase in fp32 and in bf16 on one processor."""
    if not (fp32 and bf16):
        return []
    lines = [
        "",
        f"Every phase there at both precisions (`{bf16['command']}`, commit `{bf16['commit'][:7]}`"
        "; share of the peak of its own precision):",
        "",
    ]
    rows = [
        [
            a["phase"],
            str(a["threads"]),
            f"{a['seconds']:.2f}",
            f"{b['seconds']:.2f}",
            f"{a['seconds'] / b['seconds']:.2f}",
            f"{a['share_of_peak']:.0%} / {b['share_of_peak']:.0%}",
        ]
        for a, b in zip(fp32["rows"], bf16["rows"], strict=True)
    ]
    header = ["phase", "threads", "fp32 (s)", "bf16 (s)", "fp32 / bf16"]
    return lines + markdown_table([*header, "share of peak fp32 / bf16"], rows)


def _ran_at(run: dict) -> str:
    """Where a benchmarked run's own commit is recorded, the words that cite it."""
    return f" (the run at `{run['run_commit'][:7]}`)" if run.get("run_commit") else ""


def precision_lines(doc: dict | None) -> list[str]:
    """Default shared8 seeds at the precision 'auto' picked, each against the fp32 run of the same
    seed in the confirmation."""
    if not doc:
        return []
    runs = doc["runs"]
    lowered = runs[0]["compute"]["precision"]
    times = "; ".join(
        f"seed {r['seed']}{_ran_at(r)}: {r['run_seconds'] / 60:.0f} min"
        + _mim_seconds(r)
        + f" against {r['fp32_run_seconds'] / 60:.0f}"
        for r in runs
    )
    lines = [
        "",
        f"Default `shared8` seeds there in {lowered} (`{doc['command']}`, commit "
        f"`{doc['commit'][:7]}`): {times} min for the fp32 run of the same seed in the "
        "confirmation (another machine); the MIM stage is the same code in every run, so its "
        "time shows how fast the machine was that day. Test means:",
        "",
    ]
    rows = []
    for r in runs:
        for arm, a in r["arms"].items():
            shown = [f"{a[k]:.3f}" for k in ("test", "fp32_test", "fp32_seed_spread_test")]
            rows.append([arm, str(r["seed"]), *shown[:2], f"{a['test_minus_fp32']:+.3f}", shown[2]])
    header = ["arm", "seed", lowered, "fp32", "difference"]
    return lines + markdown_table([*header, "fp32 seed-to-seed spread (std)"], rows)


def _mim_seconds(run: dict) -> str:
    """' (MIM stage N s)' of a precision run that recorded its phases, else ''."""
    seconds = run.get("phases", {}).get("stage_0")
    return f" (MIM stage {seconds:.0f} s)" if seconds is not None else ""


def allocator_lines(doc: dict | None) -> list[str]:
    """Server steps in fresh processes with malloc's defaults and with freed memory kept: one
    step in the main thread, or (`threaded`) two in a row in a thread of their own, as a
    ServerApp runs under Flower's Simulation Engine."""
    if not doc:
        return []
    how = (
        "two in a row in a thread of their own (as a ServerApp runs)"
        if doc.get("threaded")
        else "one in the main thread"
    )
    lines = [
        "",
        f"`shared8` server steps (teacher outputs and one distillation epoch, {doc['precision']}, "
        f"2 threads), {how}, each process fresh, with glibc malloc's defaults and with freed "
        "memory kept for reuse (`core/device.keep_freed_memory`, which a run's server process "
        "applies) "
        f"(`{doc['command']}`, commit `{doc['commit'][:7]}`):",
        "",
    ]
    seconds = ("wall_seconds", "user_seconds", "system_seconds")
    rows = [
        ["freed memory kept" if r["kept"] else "defaults", str(r.get("call", 1))]
        + [f"{r[k]:.1f}" for k in seconds]
        + [f"{r['page_faults']:,}", f"{r['peak_rss_mb']:.0f}"]
        for r in doc["rows"]
    ]
    header = ["malloc", "call", "wall (s)", "user (s)", "system (s)", "page faults"]
    return lines + markdown_table([*header, "peak RSS (MB)"], rows)


def arena_lines(doc: dict | None) -> list[str]:
    """Training steps in a fresh process each: in the main thread or in a thread, with malloc's
    defaults, freed memory kept, and kept with one arena for every thread."""
    if not doc:
        return []
    lines = [
        "",
        f"Where a thread's page faults come from: {doc['steps']} bf16 training steps of the "
        f"encoder (batch {doc['batch']} at {doc['size']} px, {doc['threads']} threads), each "
        "process fresh, malloc set before any thread starts; one arena: M_ARENA_MAX = 1, which "
        f"the package does not set yet (`{doc['command']}`, commit `{doc['commit'][:7]}`):",
        "",
    ]
    rows = [
        [r["malloc"], r["where"], f"{r['wall_seconds']:.2f}", f"{r['page_faults']:,}"]
        for r in doc["rows"]
    ]
    return lines + markdown_table(["malloc", "thread", "wall (s)", "page faults"], rows)


def distill_steps_lines(doc: dict | None) -> list[str]:
    """Distillation steps with more sites' heads, before and after a change, each in a fresh
    process: time per step and how far the step's peak memory rose above the process's memory."""
    if not doc:
        return []
    intro = (
        "Memory of distillation steps against the number of sites: 12 `shared8` steps (batch 16 "
        "at 128 px and 64 at 32 px, the server's threads and precision, random pool images), the "
        "eight sites split into shards, each row a fresh process running the package at the "
        "commit shown; growth: the peak resident memory during the steps (VmHWM, reset before "
        "them) above the resident memory before them"
    )
    return fresh_process_lines(doc, intro, {})


def server_memory_lines(doc: dict | None) -> list[str]:
    """A whole server step with more site models, each in a fresh process: the teachers' outputs'
    time, the distillation's time per step and how far the step's peak memory rose."""
    if not doc:
        return []
    intro = (
        "Memory of a whole server step against the number of sites: the real `shared8` pool, the "
        "eight sites split into shards (site models freshly initialised), the teachers' outputs "
        "on disk; every teacher's and the previous model's outputs, then the first 12 "
        "distillation steps; each row a fresh process; growth: the peak resident memory during "
        "the step (VmHWM, reset before it) above the resident memory before it"
    )
    return fresh_process_lines(
        doc, intro, {"teacher outputs (s)": lambda r: f"{r['teacher_outputs_seconds']:.0f}"}
    )


def fresh_process_lines(doc: dict, intro: str, more: dict[str, Callable[[dict], str]]) -> list[str]:
    """A table of `bench/speed.py`'s rows measured in fresh processes (`fresh_processes`): the
    package's commit, sites, the `more` columns, seconds per step, memory before and growth."""
    lines = ["", f"{intro} (`{doc['command']}`, commit `{doc['commit'][:7]}`):", ""]
    rows = [
        [
            f"`{r['package_commit']}`",
            str(r["sites"]),
            *(cell(r) for cell in more.values()),
            f"{r['seconds_per_step']:.2f}",
            f"{r['rss_before_mb']:.0f}",
            f"{r['step_growth_mb']:.0f}",
        ]
        for r in doc["rows"]
    ]
    header = ["package", "sites", *more, "seconds per step", "resident before (MB)", "growth (MB)"]
    return lines + markdown_table(header, rows)


def scaling_lines(scale: dict, where: str = "") -> list[str]:
    """One server step (teacher outputs and one distillation epoch) for more sites and pools, with
    the teachers' outputs in memory or on disk (`runtime.teacher_outputs`), measured `where`."""
    place = scale["rows"][0].get("teacher_outputs", "memory") if scale["rows"] else "memory"
    state = "every row" if scale["complete"] else "stopped before every row ran"
    lines = [
        "",
        f"Scaling of one server step{where}, teacher outputs {'on' if place == 'disk' else 'in'} "
        f"{place} (`{scale['command']}`, commit "
        f"`{scale['commit'][:7]}`, {state}): the eight real sites split into shards (their site "
        "models freshly initialised), one distillation epoch over the pool, repeated and flipped "
        "for x4; peak RSS is the process's high-water mark so far (plot: "
        "`bench/results/speed.png`):",
        "",
    ]
    rows = [
        [
            str(r["sites"]),
            f"x{r['pool_factor']}",
            str(sum(r["pool_images"].values())),
            f"{r['server_step_seconds']:.0f}",
            f"{r['server_step_seconds'] / r['sites']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
        ]
        for r in scale["rows"]
    ]
    header = ["sites", "pool", "pool images", "server step (s)", "seconds per site"]
    return lines + markdown_table([*header, "peak RSS (MB)"], rows)


def extend_lines(doc: dict) -> list[str]:
    """A site that joins later against a full rerun: the new task, and the old tasks before and
    after (forgetting)."""
    new, seconds = doc["new_task"], doc["seconds"]
    lines = [
        f"A site that joins later (`meduniverse extend`), {doc['config']}, seed {doc['seeds'][0]}: "
        f"`{doc['new_site']}` joins after stage {doc['stages']['before']} and the federation runs "
        f"to stage {doc['stages']['after']}, against a rerun with every site from the start "
        f"(`bench/results/extend.json`, `python bench/extend.py`, commit `{doc['commit'][:7]}`; "
        f"the extension took {seconds['extension']:.0f} s after a {seconds['before']:.0f} s run, "
        f"the rerun {seconds['rerun']:.0f} s):",
        "",
    ]
    rows = [
        [f"{site} (universal)", *(f"{row[k]:.3f}" for k in ("before", "after_extension", "rerun"))]
        for site, row in doc["old_tasks"].items()
    ]
    sources = ("extended", "rerun")
    rows += [
        [f"**{doc['new_site']}** (new, {arm})", "-", *(f"{new[k][arm]:.3f}" for k in sources)]
        for arm in ARMS[1:]
    ]
    header = ["task", "before the extension", "after the extension", "rerun from scratch"]
    return lines + markdown_table(header, rows)


def _method_means(mean: dict) -> list[str]:
    """The method's three arms as table cells."""
    return [f"{mean[a]:.3f}" for a in ARMS]


def _method_overrides(command: str) -> set[str]:
    """A bench/privacy.py command's `method.*` overrides."""
    return {o for o in overrides(command) if o.startswith("method.")}


def row_without_dp(docs: dict[str, dict], doc: dict) -> tuple[dict, str, str] | None:
    """The row without DP of another privacy file in `docs` (name: document) that ran the same
    config and seeds as `doc`, that file's name and its command; of several, the one whose
    `method.*` overrides differ least from `doc`'s; None if there is none."""
    found = [
        (r, file, other["command"])
        for file, other in docs.items()
        if other is not doc and (other["config"], other["seeds"]) == (doc["config"], doc["seeds"])
        for r in other["rows"]
        if r["epsilon"] == "none"
    ]
    mine = _method_overrides(doc["command"])
    return min(found, key=lambda f: len(mine ^ _method_overrides(f[2])), default=None)


def _privacy_table(rows: list[dict]) -> list[str]:
    """Per target epsilon: the method's test means, the epsilon spent, the attacks' AUC, time."""
    cells = []
    for r in rows:
        audit = r["audit_mean"]
        spent = f"{max(r['spent'].values()):.2f}" if r.get("spent") else "-"
        aucs = [f"{audit.get(k, float('nan')):.3f}" for k in ("loss_auc", "reference_auc")]
        seconds = f"{r['run_seconds']:.0f} s"
        cells.append([r["epsilon"], *_method_means(r["test_mean"]), spent, *aucs, seconds])
    header = ["target epsilon", *ARMS, "largest epsilon spent", "loss attack AUC"]
    return markdown_table([*header, "calibrated attack AUC", "run time"], cells)


def privacy_lines(
    doc: dict, file: str, without_dp: tuple[dict, str, str] | None = None
) -> list[str]:
    """Utility and membership-inference AUC per target epsilon, from `file` under bench/results;
    with the issue's goal at epsilon 8 (the stronger attack's AUC <= 0.55, the universal model's
    mean drop <= 0.03) where an epsilon-8 row exists and a row without DP: this file's, or else
    `without_dp` (a row and the file it is from: same config and seed)."""
    lines = [
        f"Differential privacy's price and the membership audit, {doc['config']}, seed "
        f"{doc['seeds'][0]} (`bench/results/{file}`, `{doc['command']}`, commit "
        f"`{doc['commit'][:7]}`, {processor(doc['machine'])}; test means over the tasks; AUC "
        "means over the sites, 0.5: members cannot be told apart):",
        "",
        *_privacy_table(doc["rows"]),
    ]
    by_epsilon = {r["epsilon"]: r for r in doc["rows"]}
    plain, source = by_epsilon.get("none"), ""
    if plain is None and without_dp is not None:
        plain, other, command = without_dp
        mine, theirs = _method_overrides(doc["command"]), _method_overrides(command)
        unlike = [
            f"{word} {', '.join(f'`{o}`' for o in sorted(found))}"
            for word, found in (("without", mine - theirs), ("with", theirs - mine))
            if found
        ]
        source = f" (row without DP from `bench/results/{other}`" + (
            f", which ran {' and '.join(unlike)})" if unlike else ")"
        )
    if "8" in by_epsilon and plain is not None:
        dp = by_epsilon["8"]
        auc = max(dp["audit_mean"].get(k, float("nan")) for k in ("loss_auc", "reference_auc"))
        drop = {a: plain["test_mean"][a] - dp["test_mean"][a] for a in ARMS[1:]}
        met = auc <= 0.55 and drop["universal"] <= 0.03
        lines += [
            "",
            "Goal at epsilon 8 on the released (universal) model: attack AUC at most 0.55 and a "
            f"mean drop of at most 0.03{source}. Stronger attack's AUC {auc:.3f}, drop "
            f"{drop['universal']:+.3f} (universal_finetuned {drop['universal_finetuned']:+.3f}): "
            + ("met." if met else "**not met**."),
        ]
    return lines


def screening_unseen(doc: dict) -> list[str]:
    """The screening runs adapted to an unseen site: each arm's val / test mean."""
    runs = [r for r in doc["runs"] if r.get("unseen")]
    if not runs:
        return []
    rows = [
        [r["run"], site, *(f"{a['val']:.3f} / {a['test']:.3f}" for a in arms.values())]
        for r in runs
        for site, arms in r["unseen"].items()
    ]
    return [
        "Screening runs adapted to a site that took no part (`meduniverse adapt`, 3 seeds of label "
        "subsets; val / test):",
        "",
        *markdown_table(["run", "site", *next(iter(runs[0]["unseen"].values()))], rows),
    ]


def fidelity_by_task(doc: dict) -> list[str]:
    """Per task and screening run: last-stage teacher minus the universal model as is (val)."""
    runs = [r for r in doc["runs"] if r["stages"] and "universal" in r["arms"]]
    runs = [r for r in runs if "teacher_val_per_task" in r["stages"][max(r["stages"], key=int)]]
    if not runs:
        return []
    teachers = [r["stages"][max(r["stages"], key=int)]["teacher_val_per_task"] for r in runs]
    universal = [r["arms"]["universal"]["val_per_task"] for r in runs]
    rows = [
        [task, *(f"{t[task] - u[task]:+.3f}" for t, u in zip(teachers, universal, strict=True))]
        for task in universal[0]
    ]
    return [
        "Where the fidelity gap sits (val, last-stage site teacher minus the universal model as "
        "is, per task):",
        "",
        *markdown_table(["task", *(r["run"] for r in runs)], rows),
    ]


def distill_screen_lines(doc: dict) -> list[str]:
    """The last-stage distillation screen (bench/screen_distill.py): each variant's universal
    model as is against the same teachers, mean and per task on validation, test mean reported."""
    tasks = list(doc["teacher_val_per_task"])
    lines = [
        f"Distillation settings screened on the last stage of run `{doc['run']}` (its stage "
        f"{doc['stage'] - 1} model and the same stage-{doc['stage']} site teachers for every row; "
        f"`bench/results/distill_screen.json`, `{doc['command']}`; each row's commit). "
        "Validation Dice/AUC of the universal model as is; choices on val, test only reported:",
        "",
    ]
    teachers = [f"{doc['teacher_val_per_task'][t]:.3f}" for t in tasks]
    rows = [["teachers", "-", "-", *teachers, f"{doc['teacher_val']:.3f}", "-", "-", "-"]]
    for name, row in doc["variants"].items():
        changed = row["settings"].replace("method.", "")
        rows.append(
            [
                name,
                f"`{row['commit'][:7]}`",
                f"`{changed}`" if changed else "the run's own",
                *(f"{row['val_per_task'][t]:.3f}" for t in tasks),
                *(f"{row[k]:.3f}" for k in ("val", "test", "fidelity_gap_val")),
                f"{row['distill_seconds']:.0f}",
            ]
        )
    header = ["variant", "commit", "settings", *tasks, "val", "test", "gap to teachers (val)"]
    return lines + markdown_table([*header, "seconds"], rows)


def transfer_lines(doc: dict) -> list[str]:
    """Strict transfer against weights: test means and bytes over the run's stages."""
    lines = [
        f"Strict transfer (`privacy.transfer`), {doc['config']}, seed {doc['seeds'][0]} "
        f"(`bench/results/transfer.json`, `{doc['command']}`, commit `{doc['commit'][:7]}`; test "
        "means over the tasks; bytes summed over the stages and sites of the universal model):",
        "",
    ]
    rows = [
        [
            r["transfer"],
            *_method_means(r["test_mean"]),
            f"{r['bytes_to_sites'] / 1e6:.1f}",
            f"{r['bytes_from_sites'] / 1e6:.1f}",
            f"{r['run_seconds']:.0f} s",
        ]
        for r in doc["rows"]
    ]
    header = ["sites send", *ARMS, "MB to sites", "MB from sites", "run time"]
    return lines + markdown_table(header, rows)


def dp_screen_lines(doc: dict) -> list[str]:
    """DP-SGD's settings screened on one config and seed: val and test means of the universal
    model and its fine-tuned arm per setting and target epsilon."""
    lines = [
        f"DP-SGD's settings screened on {doc['config']}, seed {doc['seeds'][0]} "
        "(`bench/results/dp_screen.json`, each row's command and commit there; chosen on val, "
        "test only reported; means over the tasks):",
        "",
    ]
    rows = [
        [
            f"`{r['setting']}`",
            r["epsilon"],
            *(f"{r['val_mean'][a]:.3f} / {r['test_mean'][a]:.3f}" for a in ARMS[1:]),
            f"`{r['commit'][:7]}`",
        ]
        for r in doc["rows"]
    ]
    header = ["setting", "target epsilon", *(f"{a} val / test" for a in ARMS[1:]), "commit"]
    return lines + markdown_table(header, rows)


def dp_sites_lines(doc: dict) -> list[str]:
    """Where DP-SGD's price is paid: per site, the noise its budget buys and its val metric after
    one stage of local training from the MIM encoder, untrained, without and with DP."""
    lines = [
        f"Where DP-SGD's price is paid, {doc['config']}, seed {doc['seeds'][0]}, target epsilon "
        f"{doc['rows'][0]['epsilon']} (`bench/results/dp_sites.json`, `{doc['command']}`, commit "
        f"`{doc['commit'][:7]}`, {processor(doc['machine'])}): one stage of each site's local "
        "training from the MIM encoder, scored on the site's val split. sigma / B: the noise's "
        "standard deviation per coordinate of a step's averaged gradient, in clipping norms (the "
        "signal is at most one clipping norm in all).",
        "",
    ]
    rows = [
        [
            r["site"],
            r["metric"],
            str(r["n"]),
            f"{r['batch']:.0f}",
            str(r["steps_per_stage"]),
            f"{r['sigma']:.2f}",
            f"{r['noise_per_clip']:.4f}",
            f"{r['trained_parameters']:,}",
            *(f"{r[arm]['val']:.3f}" for arm in ("untrained", "without_dp", "with_dp")),
            f"{r['without_dp']['val'] - r['with_dp']['val']:+.3f}",
        ]
        for r in doc["rows"]
    ]
    header = ["site", "metric", "n", "B", "steps / stage", "sigma", "sigma / B", "trained"]
    header += ["untrained", "without DP", "with DP", "DP's cost"]
    lines += markdown_table(header, rows)
    below = [r for r in doc["rows"] if r["with_dp"]["val"] < r["untrained"]["val"]]
    if below:
        named = ", ".join(
            f"{r['site']} (n = {r['n']}; {r['with_dp']['val']:.3f} against "
            f"{r['untrained']['val']:.3f}, and {r['without_dp']['val']:.3f} without DP)"
            for r in below
        )
        lines += ["", f"A stage with DP ends below the untrained model at: {named}."]
    return lines
