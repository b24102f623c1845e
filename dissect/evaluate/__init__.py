"""How good are the labels? Every way dissect scores a label or explanation, in one package.

* :mod:`.metrics`        the framework's metrics of an activation against a concept's presence (pure kernels)
* :mod:`.presence`       where a concept's presence on each image comes from: annotations, classes, or CLIP
* :mod:`.mixture`        CLIP presence without labels: a concept's cosines over the probe alone (pure kernels)
* :mod:`.simulate`       simulation scores: how well each label predicts its unit on held-out images
* :mod:`.sanity`         the framework's missing-labels and extra-labels tests (pure kernels)
* :mod:`.sanity_report`  those tests on the synthetic setting and on one's own units
* :mod:`.protocol`       the paper's final-layer protocol (§4.2), App. A.6 and §5
* :mod:`.resampling`     label stability under resampling, permutation p-values
* :mod:`.results`        what an evaluation returns and how it is written

Names are imported on first use, so that ``dissect.evaluate.metrics`` loads nothing else.
"""

_LAZY = {
    "Truth": "protocol", "load_truth": "protocol", "normalise": "protocol", "evaluate": "protocol",
    "write_evaluation": "protocol", "weight_analysis": "protocol", "predict_class": "protocol", "pearson": "protocol",
    "final_linear": "protocol", "CLASS_LISTS": "protocol", "DEFAULT_SENTENCE_MODEL": "protocol",
    "Evaluation": "results", "write_units": "results",
    "label_stability": "resampling", "permutation_pvalues": "resampling",
    "write_simulation": "simulate", "read_scores": "simulate",
    "run_report": "sanity_report", "write_report": "sanity_report",
    "Calibration": "presence", "parse_calibration": "presence", "DEFAULT_CALIBRATION": "presence",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
