"""The kinds of processor the benchmarks tell apart, by their bf16 arithmetic
(`meduniverse.core.device.cpu_bf16`): the suffix of each kind's parts in bench/results/speed.json
and how the README names it."""

SUFFIX = {"amx": "_amx", "avx512": "_avx512", "none": ""}
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
