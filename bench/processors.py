"""The kinds of processor the benchmarks tell apart, by their bf16 arithmetic
(`meduniverse.core.device.cpu_bf16`): the suffix of each kind's parts in bench/results/speed.json
and how the README names it."""

SUFFIX = {"none": "", "amx": "_amx", "avx512": "_avx512"}
MACHINE = {"none": "", "amx": "the AMX machine", "avx512": "the avx512_bf16 machine"}
NAME = {
    "amx": "a CPU with AMX bf16 units",
    "avx512": "a CPU with avx512_bf16 instructions but no AMX units",
    "none": "a CPU without bf16 arithmetic",
}


def processor(machine: dict) -> str:
    """How the README names the kind of CPU a benchmark's `machine` record describes."""
    if "cpu_bf16" in machine:
        return NAME[machine["cpu_bf16"]]
    if "bf16_matrix_units" not in machine:
        return "a CPU of unrecorded kind"
    return "a CPU with" + ("" if machine["bf16_matrix_units"] else "out") + " bf16 matrix units"


def kinds(doc: dict, part: str) -> list[tuple[str, dict]]:
    """(kind, figures) for every kind of processor speed.json `doc` holds `part` for."""
    return [(kind, doc[part + suffix]) for kind, suffix in SUFFIX.items() if part + suffix in doc]
