"""dissect evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import options as O
from . import output
from .app import DefaultCommandGroup, app, subcommand

evaluate_app = typer.Typer(
    cls=DefaultCommandGroup,
    no_args_is_help=True,
    help="Score labels against known concepts (paper §4.2), by how well they predict each unit, or check how stable "
    "and significant they are.\n\n"
    "dissect evaluate LABELS... --truth imagenet|cifar100|FILE: accuracy, top-K, CLIP and sentence cosine.\n\n"
    "dissect evaluate simulate LABELS... -a activations.h5: simulation scores (how well each label predicts its "
    "unit, from annotations or CLIP presence).\n\n"
    "dissect evaluate sanity: the unified framework's sanity tests of every metric and similarity function.\n\n"
    "dissect evaluate segment PROBE --masks DIR --model SPEC --layers L: NetDissect's IoU of every unit with "
    "segmentation masks, and whether its label agrees.\n\n"
    "dissect evaluate stability / pvalues: bootstrap label stability and permutation p-values per unit.\n\n"
    "dissect evaluate predict-class / weights: the paper's class-prediction and weight analyses.",
)
app.add_typer(evaluate_app, name="evaluate")


@subcommand(evaluate_app, "labels", hidden=True)
def evaluate(
    labels: Annotated[list[Path], typer.Argument(help="labels.parquet files (several: one row each, the paper's Table 3).", show_default=False)],
    truth: Annotated[str, typer.Option("--truth", help="True name of each unit: imagenet, imagenet-wordnet (the official evaluation's), cifar100, a .txt file (line k = unit k) or a unit,name .csv.", show_default=False)],
    layer: Annotated[Optional[str], typer.Option("--layer", help="The layer the truth describes [default: the only one, or the one with as many units as classes].")] = None,
    clip: Annotated[Optional[str], typer.Option("--clip", help="CLIP model for the clip_cos column [default: the one recorded with the labels; the paper used ViT-B-16:openai].")] = None,
    sentence_model: Annotated[str, typer.Option("--sentence-model", help="sentence-transformers model name or local folder for sentence_cos ('none' to skip).")] = "all-mpnet-base-v2",
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=1, help="Top-K match against the first K candidates [default: all candidates].")] = None,
    cutoff: Annotated[Optional[float], typer.Option("--cutoff", help="Similarity above which a unit counts as interpretable (App. A.8: 0.16 for SoftWPMI).")] = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="metrics.parquet (one row per unit); the summary goes to metrics.json beside it.")] = None,
    device: O.Device = "auto",
):
    """Score labels against known concepts: accuracy, top-K, CLIP and sentence cosine (paper §4.2)."""
    from dissect.evaluate import protocol as stage

    if out is not None:
        _check_outputs(out, [*labels, truth])
    ev = stage.evaluate([str(p) for p in labels], truth, layer=layer, clip=clip, sentence_model=sentence_model, top_k=top_k,
             cutoff=cutoff, device=device)
    _print_summary(ev)
    if out is not None:
        output.wrote(*stage.write_evaluation(ev, out))


def _print_summary(ev) -> None:
    from rich.table import Table

    topk = next(k for k in ev.summary[0] if k.startswith("top") and k.endswith("_accuracy"))
    table = Table(title="Label quality (paper Table 3 layout)", title_justify="left")
    cols = ["labels", "similarity", "concepts", "layer", "units", "accuracy", topk.replace("_accuracy", ""), "CLIP cos"]
    has_sentence = ev.summary[0].get("sentence_cos") is not None
    if has_sentence:
        cols.append("sentence cos")
    if "interpretable" in ev.summary[0]:
        cols.append("interpretable")  # of the evaluated layer; every layer's share is in the JSON
    for c in cols:
        table.add_column(c, justify="right" if c not in ("labels", "similarity", "concepts", "layer") else "left")
    for row in ev.summary:
        cells = [Path(row["labels"]).stem, row["similarity_fn"], row["concept_set"], row["layer"], str(row["units"]),
                 f"{row['accuracy']:.1%}", f"{row[topk]:.1%}", f"{row['clip_cos']:.4f}"]
        if has_sentence:
            cells.append(f"{row['sentence_cos']:.4f}")
        if "interpretable" in row:
            cells.append(f"{row['interpretable'][row['layer']]:.0%}")
        table.add_row(*cells)
    output.show(table)


def _check_outputs(out, inputs) -> None:
    """OUT and the summary JSON beside it must overwrite none of the inputs."""
    from dissect import artifacts as A

    kind = "a Parquet table and a JSON summary beside it"
    A.check_output_path(out, inputs, kind)
    A.check_output_path(A.summary_path_of(out), inputs, kind)


def _write_units(ev, out, stage: str) -> None:
    from dissect import artifacts as A
    from dissect.evaluate.results import write_units

    kind = {"predict-class": A.PREDICT_FORMAT, "stability": A.STABILITY_FORMAT, "pvalues": A.PVALUES_FORMAT}[stage]
    output.wrote(*write_units(ev, out, kind, f"evaluate {stage}"))


def _print_layers(ev, title: str, columns: list[tuple[str, str, str]]) -> None:
    rows = [[format(row[key], fmt) if fmt else str(row[key]) for _, key, fmt in columns] for row in ev.summary]
    output.show(output.table(title, [header for header, _, _ in columns], rows))


@subcommand(evaluate_app, "stability")
def stability(
    images: O.Images,
    activations: O.Activations,
    out: Annotated[Path, typer.Option("-o", "--out", help="stability.parquet (one row per unit); the per-layer summary goes to stability.json beside it.", show_default=False)],
    text: O.Text = None,
    concepts: O.Concepts = None,
    sim: O.Sim = "softwpmi",
    param: O.Param = None,
    layers: O.LayersOptional = None,
    resamples: Annotated[int, typer.Option("--resamples", "-B", min=1, help="Bootstrap resamples of the probe set (each costs one `label` of the layer).")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the resampling.")] = 0,
    max_memory: O.MaxMemory = O.DEFAULT_MAX_MEMORY,
    device: O.Device = "auto",
):
    """How often each unit keeps its label when the probe set is resampled (bootstrap; nothing is re-encoded)."""
    from dissect.evaluate.resampling import label_stability
    from dissect.label import LabelSettings

    _check_outputs(out, [images, activations, text, concepts])
    ev = label_stability(images, activations, text=text, concepts=concepts, layers=O.split_list(layers) or None,
                         resamples=resamples, seed=seed, settings=LabelSettings(sim=sim, params=O.parse_params(param)),
                         compute=O.compute(device, max_memory))
    _print_layers(ev, f"Label stability over {resamples} bootstrap resamples",
                  [("layer", "layer", ""), ("units", "units", ""), ("mean stability", "mean_stability", ".3f"),
                   ("stable (>= 0.9)", "stable_share", ".1%")])
    _write_units(ev, out, "stability")


@subcommand(evaluate_app, "pvalues")
def pvalues(
    images: O.Images,
    activations: O.Activations,
    out: Annotated[Path, typer.Option("-o", "--out", help="pvalues.parquet (one row per unit); the per-layer summary goes to pvalues.json beside it.", show_default=False)],
    text: O.Text = None,
    concepts: O.Concepts = None,
    sim: O.Sim = "softwpmi",
    param: O.Param = None,
    layers: O.LayersOptional = None,
    permutations: Annotated[int, typer.Option("--permutations", "-P", min=1, help="Shuffles of the activations (each costs one `label` of the layer); the smallest p-value is 1/(1+P).")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the permutations.")] = 0,
    max_memory: O.MaxMemory = O.DEFAULT_MAX_MEMORY,
    device: O.Device = "auto",
):
    """An empirical p-value per unit: how often shuffled activations reach the unit's best similarity."""
    from dissect.evaluate.resampling import permutation_pvalues
    from dissect.label import LabelSettings

    _check_outputs(out, [images, activations, text, concepts])
    ev = permutation_pvalues(images, activations, text=text, concepts=concepts, layers=O.split_list(layers) or None,
                             permutations=permutations, seed=seed,
                             settings=LabelSettings(sim=sim, params=O.parse_params(param)),
                             compute=O.compute(device, max_memory))
    _print_layers(ev, f"Permutation p-values ({permutations} draws)",
                  [("layer", "layer", ""), ("units", "units", ""), ("p < 0.01", "share_p_below_0.01", ".1%"),
                   ("p < 0.05", "share_p_below_0.05", ".1%")])
    _write_units(ev, out, "pvalues")


ClassesOpt = Annotated[str, typer.Option("--classes", help="Class names in output order: imagenet, imagenet-wordnet, cifar100, a .txt file or a unit,name .csv.", show_default=False)]
LabelsOpt = Annotated[Path, typer.Option("--labels", help="labels.parquet holding the layer that feeds the final linear layer.", show_default=False)]
LayerOpt = Annotated[str, typer.Option("--layer", help="That layer's name (ResNet: layer4 recorded with --summary mean).", show_default=False)]
ClipOpt = Annotated[Optional[str], typer.Option("--clip", help="CLIP model for the label-to-class similarity [default: the one recorded with the labels].")]
SentenceOpt = Annotated[str, typer.Option("--sentence-model", help="sentence-transformers model of the mpnet cos ('none': CLIP cos only).")]
MixOpt = Annotated[str, typer.Option("--mix", help="Label-class similarity: official (3*CLIP + mpnet, the official notebook), "
                                                   "paper ((CLIP + mpnet)/2, the paper's text), sentence (mpnet) or clip.")]


@subcommand(evaluate_app, "predict-class")
def predict_class(
    labels: LabelsOpt,
    activations: O.Activations,
    layer: LayerOpt,
    model: O.Model,
    classes: ClassesOpt,
    out: Annotated[Path, typer.Option("-o", "--out", help="predict.parquet (one row per image); the summary goes to predict.json beside it.", show_default=False)],
    weights: O.Weights = None,
    model_arg: O.ModelArg = None,
    clip: ClipOpt = None,
    sentence_model: SentenceOpt = "all-mpnet-base-v2",
    mix: MixOpt = "official",
    device: O.Device = "auto",
):
    """App. A.6: how often the label of the unit contributing most to a prediction names the predicted class."""
    from dissect.evaluate import protocol as stage

    _check_outputs(out, [labels, activations, classes])
    ev = stage.predict_class(labels, activations, layer, model, classes, weights=weights, model_args=O.model_args(model_arg), clip=clip,
             sentence_model=sentence_model, device=device, mix=mix)
    row = ev.summary[0]
    cols = [("images", "images", ""), ("label = predicted class", "agreement_with_predicted", ".2%")]
    if row["agreement_with_true"] is not None:
        cols += [("label = true class", "agreement_with_true", ".2%"), ("model accuracy", "model_accuracy", ".2%")]
    _print_layers(ev, f"Top contributing unit of {layer} vs. the class ({row['final_layer']}; label to class by "
                      f"{row['similarity']})", cols)
    _write_units(ev, out, "predict-class")


@subcommand(evaluate_app, "weights")
def weights_cmd(
    labels: LabelsOpt,
    layer: LayerOpt,
    model: O.Model,
    classes: ClassesOpt,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="weights.json with the correlations and Fig. 5b's means.")] = None,
    weights: O.Weights = None,
    model_arg: O.ModelArg = None,
    clip: ClipOpt = None,
    sentence_model: SentenceOpt = "all-mpnet-base-v2",
    top_weights: Annotated[int, typer.Option("--top-weights", min=1, help="Correlation over this many largest weights too (paper: 50,000).")] = 50_000,
    mix: MixOpt = "sentence",
    device: O.Device = "auto",
):
    """§5: correlation between final-layer weights W[c, j] and the similarity of unit j's label to class c."""
    from dissect import artifacts as A
    from dissect.evaluate import protocol as stage

    if out is not None:
        A.check_output_path(out, [labels, classes], "a Parquet table and a JSON summary beside it")
    res = stage.weight_analysis(labels, layer, model, classes, weights=weights, model_args=O.model_args(model_arg),
                                clip=clip, sentence_model=sentence_model, top_weights=top_weights, device=device, mix=mix)
    rows = [[what, res[key]["n"], f"{res[key]['r']:.4f}", f"{res[key]['p']:.3g}"]
            for key, what in (("pearson_all", "all"), ("pearson_top", f"top {res['pearson_top']['n']}"))]
    output.show(output.table(f"{res['final_layer']} weights vs. label-class similarity ({res['similarity']})",
                             ("weights", "n", "pearson r", "p-value"), rows),
                "mean similarity of each class's top-k weights: "
                + ", ".join(f"k={k} {v:.4f}" for k, v in res["mean_similarity_of_top_k_weights"].items()))
    if out is not None:
        output.wrote(stage.write_weights(res, out))


@subcommand(evaluate_app, "simulate")
def simulate_cmd(
    labels: Annotated[list[Path], typer.Argument(help="labels.parquet, composed.parquet, explanations.parquet, or the CSVs other methods publish: CLIP-Dissect, MILAN, NetDissect, Linear Explanations, Describe-and-Dissect, INVERT, CoSy, FALCON (several: one table row each).", show_default=False)],
    activations: O.Activations,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="simulate.parquet (one row per labels file, layer and unit); the summary goes to simulate.json beside it.")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="images.h5: estimate each label's presence with its CLIP model (when no --annotations).")] = None,
    text: O.Text = None,
    annotations: O.Annotations = None,
    class_names: O.ClassNames = None,
    superclasses: O.Superclasses = None,
    layer: Annotated[Optional[str], typer.Option("--layer", help="Score only this layer (names the layer of a file that holds one and does not say which, as NetDissect tallies; otherwise taken from the file name).")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Top fraction of images on which a unit counts as active (the binarised metrics: AUPRC, F1, IoU, AUC, ...); the framework's default.")] = 0.005,
    metrics: Annotated[str, typer.Option("--metrics", help="Metrics to write: 'all' (the framework's 18) or a comma-separated list; correlation always.")] = "all",
    conventions: Annotated[str, typer.Option("--conventions", help="dissect (NaN where a metric is undefined, mid-ranks for ties) or neuron-eval (the reference code's; docs/FIDELITY.md).")] = "dissect",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampled metrics (the top-and-random correlations), per unit.")] = 0,
    calibration: O.Calibration = "mixture",
    max_memory: O.MaxMemory = O.DEFAULT_MAX_MEMORY,
    device: O.Device = "auto",
    composed: Annotated[str, typer.Option("--composed", help="How a composed label predicts: phrase (CLIP's presence of the composed text) or and (present where all its parts are: the product of their presences, as compose --select simulate reads it).")] = "phrase",
):
    """Simulation scores: how well each label predicts its unit's activation on held-out images (correlation, and every metric of the unified framework)."""
    from dissect.evaluate import simulate as stage

    if out is not None:
        _check_outputs(out, [*labels, activations, images, text,
                             annotations if annotations not in (None, "classes") else None])
    settings = stage.SimulateSettings(alpha=alpha, calibration=stage.parse_calibration(calibration), composed=composed,
                                      class_names=class_names, superclasses=superclasses,
                                      metrics=stage.parse_metrics(metrics), conventions=conventions, seed=seed)
    sim = stage.simulate([str(p) for p in labels], activations, images=images, text=text, annotations=annotations,
                         layer=layer, settings=settings, compute=O.compute(device, max_memory))
    _print_simulation(sim)
    if out is not None:
        output.wrote(*stage.write_simulation(sim, out))


@subcommand(evaluate_app, "ablate")
def ablate_cmd(
    labels: Annotated[list[Path], typer.Argument(help="labels.parquet, composed.parquet, explanations.parquet, or another method's label files (several: compared on the same units).", show_default=False)],
    activations: O.Activations,
    probe: Annotated[list[str], typer.Option("--probe", help="The probe images the activations were recorded on (the network runs on them again).", show_default=False)],
    model: O.Model,
    out: Annotated[Path, typer.Option("-o", "--out", help="ablate.parquet (one row per labels file, layer and unit); the summary goes to ablate.json beside it.", show_default=False)],
    weights: O.Weights = None,
    model_arg: O.ModelArg = None,
    input_size: O.InputSize = None,
    crop_pct: O.CropPct = None,
    mean: O.Mean = None,
    std: O.Std = None,
    interpolation: O.Interpolation = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="images.h5: each label's presence from its CLIP model (when no --annotations).")] = None,
    text: O.Text = None,
    annotations: O.Annotations = None,
    class_names: O.ClassNames = None,
    superclasses: O.Superclasses = None,
    layer: Annotated[Optional[str], typer.Option("--layer", help="Only this layer (names the layer of a file that holds one and does not say which).")] = None,
    loss: Annotated[str, typer.Option("--loss", help="ce (the true class of an ImageFolder probe), kl (the change of the output distribution) or auto (ce where the probe's class folders are as many as the outputs).")] = "auto",
    temperature: Annotated[float, typer.Option("--temperature", help="The logits' calibration temperature (Linear Explanations: 1.1).")] = 1.1,
    validation: Annotated[float, typer.Option("--validation", help="Share of the scoring images (by id hash) whose statistics map each prediction to its unit's scale.")] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the validation split.")] = 0,
    samples: Annotated[int, typer.Option("--samples", min=3, help="Copies per forward pass of the network's tail (images x (1 + 2 units)).")] = 256,
    calibration: O.Calibration = "mixture",
    composed: Annotated[str, typer.Option("--composed", help="How a composed label predicts: phrase or and (as in simulate).")] = "phrase",
    device: O.Device = "auto",
    workers: O.Workers = None,
):
    """Ablation scores: how much of the damage of removing each unit its label's prediction undoes (Linear Explanations' causal score)."""
    from dissect.evaluate import ablate as stage
    from dissect.evaluate.simulate import parse_calibration

    _check_outputs(out, [*labels, activations, images, text, annotations if annotations not in (None, "classes") else None])
    abl = stage.ablate([str(p) for p in labels], activations, probe,
                       O.target(model, weights, model_arg, input_size, crop_pct, mean, std, interpolation),
                       images=images, text=text, annotations=annotations, layer=layer,
                       settings=stage.AblateSettings(temperature=temperature, validation=validation, seed=seed, loss=loss,
                                                     samples=samples),
                       options=O.pass_options(device, 64, workers),
                       calibration=parse_calibration(calibration), composed=composed, class_names=class_names,
                       superclasses=superclasses)
    rows = [[Path(s["labels"]).name, s["method"], s["layer"], f"{s['scored_units']}/{s['units']}", str(s["n_images"]),
             "-" if s["mean_ablation"] is None else f"{s['mean_ablation']:.3f}"] for s in abl.summary]
    output.show(output.table(f"Ablation scores ({abl.metadata['loss']} loss): the share of a unit's mean-ablation damage "
                             "its label's prediction undoes", ("labels", "method", "layer", "units", "images",
                                                                ("mean ablation", "right")), rows))
    output.wrote(*stage.write_ablation(abl, out))


def _print_simulation(sim) -> None:
    from rich.table import Table

    layers = list(dict.fromkeys(r["layer"] for r in sim.summary))
    files = list(dict.fromkeys(r["labels"] for r in sim.summary))
    table = Table(title="Simulation correlation on held-out images: mean (share of units > 0.1)", title_justify="left")
    table.add_column("labels")
    table.add_column("method")
    for lay in layers:
        table.add_column(lay, justify="right")
    cell = {(r["labels"], r["layer"]): r for r in sim.summary}
    for f in files:
        first = next(r for r in sim.summary if r["labels"] == f)
        cells = []
        for lay in layers:
            r = cell.get((f, lay))
            if r is None or r["mean_correlation"] is None:
                cells.append("-")
            else:
                mark = "" if r["held_out"] else "*"
                part = "" if r["scored_units"] == r["units"] else f" {r['scored_units']}/{r['units']} units"
                cells.append(f"{r['mean_correlation']:.3f}{mark} ({r['share_correlation_above_0.1']:.0%}){part}")
        table.add_row(Path(f).name, first["method"], *cells)
    output.show(table)
    if any(not r["held_out"] for r in sim.summary):
        output.show("* scored on the images the labels were made on (optimistic)")


@subcommand(evaluate_app, "sanity")
def sanity_cmd(
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="sanity.parquet (one row per setting and scorer); the summary goes to sanity.json beside it.")] = None,
    activations: Annotated[Optional[Path], typer.Option("--activations", help="activations.h5: also run the tests on these units (with --annotations).")] = None,
    annotations: O.Annotations = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="labels.parquet pairing each unit with its concept [default: the annotated concept of highest IoU, the framework's choice].")] = None,
    layers: O.LayersOptional = None,
    repetitions: Annotated[int, typer.Option("--repetitions", "-R", min=1, help="Perturbations drawn per test.")] = 100,
    n_inputs: Annotated[int, typer.Option("--n-inputs", min=100, help="Inputs of the synthetic setting (the framework: 500,000; the README shows the rates do not change).")] = 100_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the perturbations, of the sampled metrics and of the validation units.")] = 0,
    alpha: Annotated[str, typer.Option("--alpha", help="Top fraction for the binarised metrics on real units: a number, 'best' (chosen per metric on 5% of the units by validation AUPRC, the framework's procedure for final layers) or 'auto' ('best' on a layer recorded as the model's output, 0.005 elsewhere).")] = "auto",
    conventions: Annotated[str, typer.Option("--conventions", help="dissect (NaN where a metric is undefined, mid-ranks for ties) or neuron-eval (the reference code's 0s, tie-breaking noise and binary top-and-random sample; docs/FIDELITY.md).")] = "dissect",
    no_synthetic: Annotated[bool, typer.Option("--no-synthetic", help="Skip the synthetic setting.")] = False,
):
    """The missing-labels and extra-labels sanity tests for every metric and every similarity function."""
    from dissect.evaluate import sanity_report as stage

    settings = stage.SanitySettings(repetitions=repetitions, n_inputs=n_inputs, seed=seed, alpha=stage.parse_alpha(alpha),
                                    conventions=conventions, synthetic=not no_synthetic)
    if out is not None:
        _check_outputs(out, [activations, labels, annotations if annotations not in (None, "classes") else None])
    rep = stage.run_report(activations=activations, annotations=annotations, labels=labels,
                           layers=O.split_list(layers) or None, settings=settings)
    _print_sanity(rep)
    if out is not None:
        output.wrote(*stage.write_report(rep, out))


def _print_sanity(rep) -> None:
    for setting in dict.fromkeys(r["setting"] for r in rep.rows):
        rows = []
        for r in (r for r in rep.rows if r["setting"] == setting):
            verdict = "pass" if r["missing_pass"] and r["extra_pass"] else \
                "fails " + " and ".join(t for t, ok in (("missing", r["missing_pass"]), ("extra", r["extra_pass"])) if not ok)
            kind = r["kind"] if r["alpha_choice"] in (None, "fixed", "binary activations") else \
                f"{r['kind']}, α {r['alpha']:g}" + (f" λ {r['lam']:g}" if r["lam"] is not None else "")
            rows.append([r["scorer"], kind, f"{r['missing_rate_mean']:.0%} / {r['missing_rate_min']:.0%}",
                         f"{r['extra_rate_mean']:.0%} / {r['extra_rate_min']:.0%}", verdict])
        rule = "in every case" if setting.startswith("synthetic") else "over the units' draws"
        output.show(output.table(f"Sanity tests, {setting}: share of perturbations that lower the score, mean / min "
                                 f"over cases (pass: >= {rep.pass_rate:.0%} {rule})",
                                 ("scorer", "kind", "missing labels (mean / min)", "extra labels (mean / min)",
                                  "verdict"), rows))


@subcommand(evaluate_app, "segment")
def segment_cmd(
    probe: O.Probe,
    masks: Annotated[Path, typer.Option("--masks", help="Mask folder (ADE20K/Broden layout): an index PNG per image at its relative path, classes.txt (line 0: unlabelled); one subfolder per mask kind.", show_default=False)],
    model: O.Model,
    layers: O.Layers,
    out: Annotated[Path, typer.Option("-o", "--out", help="segment.parquet (one row per unit); the summary goes to segment.json beside it.", show_default=False)],
    weights: O.Weights = None,
    model_arg: O.ModelArg = None,
    input_size: O.InputSize = None,
    crop_pct: O.CropPct = None,
    mean: O.Mean = None,
    std: O.Std = None,
    interpolation: O.Interpolation = None,
    layout: O.Layout = "auto",
    labels: Annotated[Optional[Path], typer.Option("--labels", help="labels.parquet (or another method's labels): whether each unit's label names its best mask concept.")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="images.h5: with --labels, also the CLIP cosine of each label with its unit's best concept.")] = None,
    text: O.Text = None,
    quantile: Annotated[float, typer.Option("--quantile", help="Top fraction of each unit's positions above its threshold (NetDissect: 0.005).")] = 0.005,
    top_images: Annotated[int, typer.Option("--top-images", min=1, help="Images per unit whose maps give its Moran's I.")] = 10,
    device: O.Device = "auto",
    batch_size: O.BatchSize = 64,
    workers: O.Workers = None,
):
    """NetDissect's IoU of every unit's thresholded map with segmentation masks, its best concept, how localised it fires (Moran's I), and whether its label agrees."""
    from dissect.evaluate import segment as stage

    _check_outputs(out, [probe[0] if probe else None, masks, labels, images, text])
    seg = stage.segment(probe, O.target(model, weights, model_arg, input_size, crop_pct, mean, std, interpolation),
                        O.split_list(layers), masks, labels=labels, images=images, text=text,
                        settings=stage.SegmentSettings(quantile=quantile, top_images=top_images, layout=layout),
                        options=O.pass_options(device, batch_size, workers, "fp32", False, 0, None, None))
    path, summary = stage.write_segmentation(seg, out)
    rows = [[s["layer"], str(s["units"]), f"{s['mean_iou']:.3f}", str(s["units_iou_above_0.04"]),
             "-" if s["label_agreement"] is None else f"{s['label_agreement']:.0%}"] for s in seg.metadata["summary"]]
    output.show(output.table("Segmentation: each unit's best mask concept (NetDissect IoU)",
                             ("layer", "units", "mean IoU", "units IoU > 0.04", "label agrees"), rows))
    output.wrote(path, summary)
