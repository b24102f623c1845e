"""The kinds of file dissect writes: their ``format`` names, the version readers accept, and the command that makes each."""

from __future__ import annotations

FORMAT_VERSION = 1
IMAGE_FORMAT = "dissect/image-embeddings"
TEXT_FORMAT = "dissect/text-embeddings"
ACTIVATIONS_FORMAT = "dissect/activations"
LABELS_FORMAT = "dissect/labels"
COMPOSED_FORMAT = "dissect/composed-labels"
EVALUATION_FORMAT = "dissect/evaluation"
PREDICT_FORMAT = "dissect/predict-class"
STABILITY_FORMAT = "dissect/stability"
PVALUES_FORMAT = "dissect/pvalues"
SIMULATE_FORMAT = "dissect/simulate"
SANITY_FORMAT = "dissect/sanity"
SEGMENT_FORMAT = "dissect/segment"
COMPARE_FORMAT = "dissect/compare"
ABLATE_FORMAT = "dissect/ablate"
EXPLAIN_FORMAT = "dissect/explanations"
DIRECTIONS_FORMAT = "dissect/directions"

HDF5_FORMATS = (IMAGE_FORMAT, TEXT_FORMAT, ACTIVATIONS_FORMAT)
PARQUET_FORMATS = (LABELS_FORMAT, COMPOSED_FORMAT, EVALUATION_FORMAT, PREDICT_FORMAT, STABILITY_FORMAT, PVALUES_FORMAT,
                   SIMULATE_FORMAT, SANITY_FORMAT, EXPLAIN_FORMAT, SEGMENT_FORMAT, COMPARE_FORMAT, ABLATE_FORMAT)

#: The command that writes each kind (named in every "expected a ... file" message).
MAKER = {
    IMAGE_FORMAT: "dissect embed-images",
    TEXT_FORMAT: "dissect embed-text",
    ACTIVATIONS_FORMAT: "dissect record",
    LABELS_FORMAT: "dissect label",
    COMPOSED_FORMAT: "dissect compose",
    EVALUATION_FORMAT: "dissect evaluate",
    PREDICT_FORMAT: "dissect evaluate predict-class",
    STABILITY_FORMAT: "dissect evaluate stability",
    PVALUES_FORMAT: "dissect evaluate pvalues",
    SIMULATE_FORMAT: "dissect evaluate simulate",
    SANITY_FORMAT: "dissect evaluate sanity",
    SEGMENT_FORMAT: "dissect evaluate segment",
    COMPARE_FORMAT: "dissect compare",
    ABLATE_FORMAT: "dissect evaluate ablate",
    EXPLAIN_FORMAT: "dissect explain",
    DIRECTIONS_FORMAT: "dissect decompose",
}

#: ``-o -``: the artifact goes to standard output.
STDOUT = "-"

