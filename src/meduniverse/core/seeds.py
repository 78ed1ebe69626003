"""Seeds: every random draw of a run derives from the run's seed through this one function."""


def derive_seed(seed: int, part: int) -> int:
    """The seed of one part of a run (a stage, a fine-tune epoch, a reference arm), distinct for
    parts 0..999."""
    return seed * 1000 + part
