"""The working-memory budget (``--max-memory``) and every rule for how much work fits in it.

Each stage streams over blocks (of concepts, image rows, units) sized so that a block's
working set stays within the budget. The rules live here, side by side, each with what
it counts; the stages and kernels ask them instead of dividing the budget themselves.
"""

from __future__ import annotations

#: Default working-memory budget of a stage (beyond its inputs), in bytes (``--max-memory``).
DEFAULT_MAX_MEMORY = 256 << 20
#: SoftWPMI/WPMI's buffer for gathering the probabilities of each neuron's top images.
GATHER_BUFFER = 48 << 20


def memory_budget(max_memory: int | None) -> int:
    """``max_memory`` bytes, or the default budget when None."""
    return max_memory or DEFAULT_MAX_MEMORY


def _fit(budget: int, per_item: int, fixed: int = 0) -> int:
    """How many items of ``per_item`` bytes fit in ``budget`` after ``fixed`` bytes (0 when none do)."""
    return max(0, budget - fixed) // max(1, per_item)


# ---------------------------------------------------------------------------
# Scoring a layer against a concept set (scoring.score_layer)
# ---------------------------------------------------------------------------

def concepts_per_block(budget: int, rows: int, neurons: int, bytes_per_row: int, pmi: bool, tile: int) -> int:
    """Concepts per block so that one block's working set fits ``budget`` bytes.

    Per concept a block holds, for the ``rows`` images it reads, ``bytes_per_row`` of
    probabilities (≈ 4 bytes: float32, plus float64 sums over row blocks; 24 for cos and
    cos-cubed, which keep a float64 copy), plus about 100 bytes per neuron (scores,
    similarities, tie-breakers, candidates and their sort keys). SoftWPMI/WPMI's gather
    buffer comes off the top. A multiple of ``tile`` and at least one, so the floor is
    rows x tile x 4 bytes whatever the budget.
    """
    n = _fit(budget, bytes_per_row * rows + 100 * neurons, GATHER_BUFFER if pmi else 0)
    return max(tile, (n // tile) * tile)


def rows_per_single_pass(budget: int, rows: int, neurons: int, concepts: int, row_tile: int) -> int:
    """Image rows per block of SoftWPMI/WPMI's single product pass within ``budget``, or 0 if it does not fit.

    The single pass holds the C×M float64 accumulator (8·C·M bytes), the gather buffer and,
    per row of a block, its M float32 probabilities and a float64 copy of up to 4,096 of
    them. It is used only when a block of at least ``row_tile`` rows (or all of them) fits.
    """
    r = (budget - 8 * neurons * concepts - GATHER_BUFFER) // max(1, 4 * concepts + 8 * min(concepts, 4096))
    if r < min(rows, row_tile):
        return 0
    return int(min(rows, r if r < row_tile else r // row_tile * row_tile))


def concepts_per_accumulator_block(budget: int, neurons: int, concepts: int, tile: int) -> int:
    """Concepts per block of the top-K merge that reads the single pass's [C, M] accumulator: about 100 bytes per
    neuron and concept beside the accumulator; a multiple of ``tile`` and at least one."""
    return max(tile, _fit(budget, 100 * neurons, neurons * concepts * 8) // tile * tile)


# ---------------------------------------------------------------------------
# Reading a layer (label), scoring units (evaluate simulate), fitting them (explain)
# ---------------------------------------------------------------------------

def units_per_read(budget: int, rows: int, units: int) -> int:
    """Units of a layer read at once: all of them, unless their [rows, units] float32 matrix exceeds a quarter
    of the budget (the rest is the scoring's working set)."""
    return int(max(1, min(units, _fit(budget // 4, 4 * rows))))


def units_per_concept_tile(budget: int, rows: int, units: int, bytes_per_row: int, pmi: bool, tile: int) -> int:
    """Units scored at once so that one block of ``tile`` concepts (the smallest block, ``concepts_per_block``'s
    floor) fits ``budget``: about 100 bytes per unit and concept beside the block's ``rows`` x ``tile`` products
    (and SoftWPMI/WPMI's gather buffer). All ``units`` when they fit; at least one."""
    per_unit = 100 * tile
    return int(max(1, min(units, _fit(budget, per_unit, bytes_per_row * rows * tile + (GATHER_BUFFER if pmi else 0)))))


def layer_exceeds(budget: int, rows: int, units: int, times: int = 4) -> bool:
    """Whether a layer's [rows, units] float32 matrix is over ``times`` the budget (then even methods that must
    recompute the image-concept products per block of units read it in blocks)."""
    return 4 * rows * units > times * budget


def units_per_simulation_block(budget: int, images: int, units: int) -> int:
    """Units scored at once by ``evaluate simulate``: each holds about 12 float64 columns over the scored images
    (activations, presence, ranks, binarised targets and their sorts)."""
    return max(1, min(units, _fit(budget, images * 8 * 12)))


def units_per_fit_batch(budget: int, images: int, width: int, most: int = 256) -> int:
    """Units fitted at once by ``explain``: each holds its [images, width + 1] float64 design matrix four times
    (train, validation, held-out and fit rows) and its refits' [width, width + 1, width + 1] Gram matrices."""
    per_unit = images * (width + 1) * 8 * 4 + (width + 1) ** 2 * width * 8 * 8
    return max(1, min(most, _fit(budget, per_unit)))
