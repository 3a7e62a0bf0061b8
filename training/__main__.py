"""``python -m training <command>``: pack, train, evaluate, export, compile, finalize, ensemble, recover, compact,
expand, teach. Every command has ``--help``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

# Keep TensorFlow's C++ start-up chatter out of the command's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA = "../shared/data/fer2013"


def _add_train(sub: argparse._SubParsersAction) -> None:
    from training.config import PRESETS

    p = sub.add_parser(
        "train",
        help="train a model on FER-2013 (selects on the val split)",
        description="Train on the train split, select on val. Flags override the preset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data", default=DEFAULT_DATA, help="folder root (<split>/<label>/*.jpg), Kaggle CSV or packed .npz"
    )
    p.add_argument(
        "--run-dir",
        help="output folder for checkpoints, log, config and model.keras (keep long runs "
        "outside the work tree, e.g. ~/fer-runs/<run>)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the stopped run in RUN_DIR exactly (its own config; no other training options)",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=0,
        metavar="N",
        help="train at most N epochs in this call, leaving the run resumable (0 = to the end)",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="flagship", help="starting configuration")
    p.add_argument("--backbone", help="resnet50v2, mobilenetv2, efficientnetv2b0, fer_cnn or fer_resnet")
    p.add_argument("--input-size", type=int, help="square input size of the served model, pixels")
    p.add_argument("--color-mode", choices=["grayscale", "rgb"], help="colour mode of the served input")
    p.add_argument("--weights", help="imagenet, none, or a path to a backbone weights file")
    p.add_argument(
        "--cnn-widths",
        type=_widths,
        help="comma-separated widths of the fer_cnn blocks or fer_resnet stages, e.g. 64,128,256,512",
    )
    p.add_argument("--batch-size", type=int)
    p.add_argument("--head-epochs", type=int, help="phase 1 epochs (backbone frozen; skipped from scratch)")
    p.add_argument("--head-learning-rate", type=float)
    p.add_argument("--epochs", type=int, help="phase 2 epochs (fine-tuning; the whole run when from scratch)")
    p.add_argument("--learning-rate", type=float, help="phase 2 learning rate")
    p.add_argument("--fine-tune-layers", type=int, help="backbone layers unfrozen in phase 2")
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--schedule", choices=["plateau", "cosine"])
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--augment", type=float, help="augmentation strength (0 disables)")
    p.add_argument("--random-erasing", type=float, help="probability of random erasing per image")
    p.add_argument(
        "--mixup",
        type=float,
        metavar="ALPHA",
        help="mix each batch's images pairwise, weighted (Beta(ALPHA, ALPHA) ratio, e.g. 0.2; 0 = off)",
    )
    p.add_argument(
        "--cutmix",
        type=float,
        metavar="ALPHA",
        help="paste a rectangle of another image of the batch into each (Beta(ALPHA, ALPHA) area, e.g. 1; 0 = off)",
    )
    p.add_argument("--mix-probability", type=float, help="share of batches mixed (with --mixup or --cutmix)")
    p.add_argument(
        "--augment-workers",
        type=_positive,
        help="threads augmenting batches ahead (a GPU outruns one; same batches)",
    )
    p.add_argument(
        "--calibration-fraction", type=float, help="share of each train class held out to fit the temperature on"
    )
    p.add_argument("--early-stopping-patience", type=int, help="epochs without improvement (0 = never stop early)")
    p.add_argument(
        "--class-weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="weight the loss by inverse class frequency (preset default: on)",
    )
    p.add_argument(
        "--class-weight-power",
        type=float,
        help="with --class-weights: 1 = fully balanced, 0.5 = its square root (leans less toward rare classes)",
    )
    p.add_argument("--mixed-precision", choices=["auto", "on", "off"])
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--holdout-seed",
        type=int,
        help="seed of the calibration hold-out if not --seed (ensemble members share one hold-out)",
    )
    p.add_argument("--limit-per-class", type=int, help="use at most N training images per class (0 = all)")
    p.add_argument(
        "--init-from",
        help="start from the weights of this .keras model (an earlier run's model.keras "
        "or checkpoint.keras, same architecture), e.g. to continue a stopped run",
    )
    p.add_argument(
        "--init-member",
        type=int,
        metavar="N",
        help="with --init-from an ensemble (python -m training ensemble or recover): start from its N-th network",
    )
    p.add_argument(
        "--teacher",
        help="distil: a .npz of an export's answers on the images this run trains on (python -m training teach)",
    )
    p.add_argument(
        "--distill-weight",
        type=float,
        help="with --teacher: the teacher's share of each target (the rest is the one-hot label)",
    )
    p.add_argument(
        "--ema",
        type=float,
        dest="ema_momentum",
        metavar="MOMENTUM",
        help="keep an exponential moving average of the weights (e.g. 0.998) and select, save and export it (0 = off)",
    )
    p.set_defaults(func=_train)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _widths(text: str) -> tuple[int, ...]:
    """Comma-separated positive widths (``64,128,256,512``)."""
    return tuple(_positive(w) for w in text.split(","))


def _train(args: argparse.Namespace) -> int:
    from training.config import PRESETS
    from training.train import train

    given = {k: v for k, v in vars(args).items() if v is not None}
    options = set(given) - {"func", "command", "data", "resume", "stop_after", "preset"}
    if args.resume:
        if options - {"run_dir"}:
            raise ValueError(f"--resume continues the run's own config; drop {', '.join(sorted(options))}")
        result = train(None, args.data, args.resume, resume=True, stop_after=args.stop_after, verbose=_verbosity())
        return _report_train(result)
    if not args.run_dir:
        raise ValueError("--run-dir is required (or --resume RUN_DIR)")
    config = PRESETS[args.preset]
    arch_fields = {f.name for f in dataclasses.fields(config.arch)}
    config = dataclasses.replace(
        config,
        arch=dataclasses.replace(config.arch, **{k: v for k, v in given.items() if k in arch_fields}),
        **{k: v for k, v in given.items() if k in {f.name for f in dataclasses.fields(config)} and k != "arch"},
    )
    return _report_train(train(config, args.data, args.run_dir, stop_after=args.stop_after, verbose=_verbosity()))


def _verbosity() -> int:
    """A progress bar on a terminal, one line per epoch in a log file."""
    return 1 if sys.stdout.isatty() else 2


def _report_train(result) -> int:
    if result.model_path.name != "model.keras":
        print(
            f"stopped after epoch {result.epochs_run} ({result.seconds / 60:.1f} min so far); "
            f"continue with: python -m training train --resume {result.run_dir}"
        )
    else:
        print(
            f"best val accuracy {result.val_accuracy:.4f} after {result.epochs_run} epochs "
            f"({result.seconds / 60:.1f} min); model: {result.model_path}"
        )
    return 0


def _add_pack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pack",
        help="decode FER-2013 once into one compressed .npz (for carrying to a GPU machine)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", default=DEFAULT_DATA, help="folder root or Kaggle CSV")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--splits", default="train,val", help="comma-separated splits to pack")
    p.add_argument(
        "--encoding",
        choices=["pixels", "jpeg"],
        default="pixels",
        help="pixels: decoded arrays (fastest to read); jpeg: the original files (smallest)",
    )
    p.set_defaults(func=_pack)


def _pack(args: argparse.Namespace) -> int:
    from training.data import pack

    out = pack(args.data, args.out, tuple(args.splits.split(",")), encoding=args.encoding)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a .keras model as the SavedModel + metadata.json the service loads",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model.keras (or checkpoint.keras) written by train")
    p.add_argument("--config", help="training config.json (default: the one beside --model)")
    p.add_argument("--report", help="evaluation report folder (from evaluate) to record and ship beside the model")
    p.add_argument("--out", default="models", help="root of the versioned layout <out>/<name>/<version>/")
    p.add_argument("--name", required=True, help="model name, e.g. fer-resnet50v2-224")
    p.add_argument("--version", default="1", help="model version (a number: the service serves the highest)")
    p.add_argument("--data", help="if given, the self-check batch is taken from this data set's val split")
    p.add_argument("--tolerance", type=float, default=1e-5, help="max allowed |Keras - SavedModel| probability")
    p.add_argument("--force", action="store_true", help="replace an existing version folder")
    p.add_argument(
        "--compile",
        action="store_true",
        help="then write and check the OpenVINO IR (fp32, bf16, int8) as `compile` does, calibrating int8 on "
        f"--data's train split (default {DEFAULT_DATA})",
    )
    p.add_argument(
        "--test-time-flip",
        action="store_true",
        help="export the graph that averages each crop's answer with its mirror image's (evaluate the "
        ".keras model with --test-time-flip for its --report)",
    )
    p.add_argument(
        "--test-time-zoom",
        type=float,
        default=None,
        metavar="Z",
        help="export the graph that also averages in the answer for each crop's centre enlarged Z times (e.g. 1.1: "
        "the centre 44 of 48 pixels; default: the training config's, 1 = none); evaluate the .keras model with "
        "the same --test-time-zoom for its --report",
    )
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from training.export import export_model

    sample = None
    if args.data:
        import numpy as np

        from training.config import TrainConfig
        from training.data import read_split
        from training.inference import fer_pixels_to_model_input

        config = TrainConfig.load(Path(args.config) if args.config else Path(args.model).parent / "config.json")
        images = read_split(args.data, "val").images[:32].astype("float32")
        sample = np.asarray(fer_pixels_to_model_input(config.arch, images))
    out = export_model(
        args.model,
        args.out,
        name=args.name,
        version=args.version,
        config_path=args.config,
        report_dir=args.report,
        sample=sample,
        tolerance=args.tolerance,
        force=args.force,
        test_time_flip=args.test_time_flip,
        test_time_zoom=args.test_time_zoom,
    )
    print(f"exported {out}")
    if args.compile:
        return _compile_and_report(out, data=args.data or DEFAULT_DATA)
    return 0


def _add_compile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compile",
        help="derive the OpenVINO IR (fp32, bf16, int8) from an export and check it against the SavedModel",
        description="Writes <version>/openvino/ (fp32 IR; bf16 = the fp32 IR under OpenVINO's bf16 hint; int8 "
        "quantized with NNCF on FER-2013 train crops), checks each against the SavedModel and records the figures "
        "in metadata.json's openvino section (training/compile.py).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="an export: models/<name>/<version> (or <name>: its highest)")
    p.add_argument("--data", default=DEFAULT_DATA, help="FER-2013: train crops calibrate int8, val ones check")
    p.add_argument("--precisions", default="fp32,bf16,int8", help="comma-separated subset of fp32,bf16,int8")
    p.add_argument("--calibration-images", type=int, default=300, help="train crops NNCF calibrates int8 on")
    p.add_argument("--check-images", type=int, default=0, help="val crops each precision is checked on (0: all of val)")
    p.add_argument("--seed", type=int, default=0, help="seed of both draws")
    p.add_argument("--check-only", action="store_true", help="check the IR files present again; write none")
    p.set_defaults(func=_compile)


def _compile(args: argparse.Namespace) -> int:
    return _compile_and_report(
        args.model,
        data=args.data,
        precisions=tuple(args.precisions.split(",")),
        calibration_images=args.calibration_images,
        check_images=args.check_images,
        seed=args.seed,
        check_only=args.check_only,
    )


def _compile_and_report(model, **options) -> int:
    from training.compile import compile_export, describe

    version_dir, section = compile_export(model, **options)
    print(f"compiled {version_dir / 'openvino'}")
    print("\n".join(describe(section)))
    return 0 if all(entry["passed"] for entry in section["precisions"].values()) else 1


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="write an evaluation report (metrics, confusion matrix, ROC-AUC, curves)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a .keras file (from train) or an exported SavedModel folder")
    p.add_argument("--config", help="training config.json for a .keras model (default: the one beside it)")
    p.add_argument("--data", default=DEFAULT_DATA, help="folder root, Kaggle CSV or packed .npz")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--out", required=True, help="report folder to write")
    p.add_argument(
        "--history",
        action="append",
        help="for the training-curves plot: a history.csv from train, or a run folder (an ensemble's: the members' "
        "histories that `ensemble` carried over); repeatable",
    )
    p.add_argument(
        "--test-time-flip",
        action="store_true",
        default=None,
        help="(.keras only) average each crop's answer with its mirror image's, as an export with "
        "--test-time-flip does; an exported model carries its own choice",
    )
    p.add_argument(
        "--test-time-zoom",
        type=float,
        default=None,
        metavar="Z",
        help="(.keras only) also average in the answer for each crop's centre enlarged Z times, as an export with "
        "--test-time-zoom Z does; an exported model carries its own choice",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="(.keras only) fit a temperature on the run's held-out train images and report the scaled "
        "probabilities (ECE before/after, reliability diagram); export --report builds it in",
    )
    p.add_argument(
        "--explain",
        type=int,
        default=0,
        metavar="N",
        help="draw explanations.png: N correct and N wrong images per class with their Grad-CAM maps",
    )
    p.set_defaults(func=_evaluate)


def _histories(given: Path) -> list[Path]:
    """``--history``: the file itself, or a run folder's training histories (none is an error: a plot was asked for)."""
    if not given.is_dir():
        return [given]
    from training.ensemble import member_histories

    found = member_histories(given)
    if not found:
        raise FileNotFoundError(f"{given} holds no training history (history.csv or history-member<N>.csv)")
    return found


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate

    m = evaluate(
        args.model,
        args.data,
        args.out,
        split=args.split,
        config_path=args.config,
        history=[path for given in args.history or [] for path in _histories(Path(given))],
        test_time_flip=args.test_time_flip,
        calibrate=args.calibrate,
        explain=args.explain,
        test_time_zoom=args.test_time_zoom,
    )
    print(
        f"{m['model']} on {m['split']} ({m['images']} images): accuracy {m['accuracy']:.4f}, "
        f"macro-F1 {m['macro_f1']:.4f}"
    )
    for label, c in m["per_class"].items():
        print(
            f"  {label:<9} precision {c['precision']:.3f}  recall {c['recall']:.3f}  F1 {c['f1']:.3f}  "
            f"support {c['support']}"
        )
    cal = m["calibration"]
    if "temperature" in cal:
        print(
            f"temperature {cal['temperature']} (fitted on {cal['fitted_on']}): expected calibration error "
            f"{cal['ece_before']:.4f} -> {cal['ece']:.4f}"
        )
    else:
        print(f"expected calibration error {cal['ece']:.4f}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _add_finalize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finalize",
        help="finish a stopped training run from its best checkpoint",
        description="Write model.keras and run.json for a run that was stopped before its last "
        "epoch, from checkpoint.keras (the best epoch so far).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run-dir", required=True, help="the run folder (config.json, history.csv, checkpoint.keras)")
    p.add_argument("--data", default=DEFAULT_DATA, help="the data the run was trained on")
    p.set_defaults(func=_finalize)


def _finalize(args: argparse.Namespace) -> int:
    from training.train import finalize

    result = finalize(args.run_dir, args.data)
    print(f"best val accuracy {result.val_accuracy:.4f} after {result.epochs_run} epochs; model: {result.model_path}")
    return 0


def _add_ensemble(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ensemble",
        help="average several finished runs (one architecture, different seeds) into one model",
        description="Write RUN_DIR/model.keras, config.json and run.json: one network whose probabilities are the "
        "mean of the members'. Evaluate and export it like any run. The members must share their calibration "
        "hold-out (train them with the same --holdout-seed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("members", nargs="+", help="run folders (model.keras, config.json, run.json)")
    p.add_argument("--run-dir", required=True, help="output folder of the ensemble")
    p.add_argument(
        "--drop",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="leave out network N (1-based, counting each network of an ensemble run; repeatable), "
        "e.g. to replace the weakest member by a new one",
    )
    p.set_defaults(func=_ensemble)


def _ensemble(args: argparse.Namespace) -> int:
    from training.ensemble import combine

    print(f"ensemble of {len(args.members)} runs: {combine(args.members, args.run_dir, drop=args.drop)}")
    return 0


def _add_recover(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recover",
        help="rebuild the run folder of an exported version (its weights, config and run record)",
        description="For when a run folder is gone: model.keras is rebuilt from the export's architecture and "
        "SavedModel variables and checked against the export; config.json and run.json come from its metadata.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("export", help="an exported version folder, e.g. models/fer-cnn-48/5")
    p.add_argument("--run-dir", required=True, help="output folder")
    p.set_defaults(func=_recover)


def _recover(args: argparse.Namespace) -> int:
    from training.ensemble import recover

    print(f"recovered: {recover(args.export, args.run_dir)}")
    return 0


def _add_compact(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compact",
        help="write a finished run as a few small files (float16 kernels; to bring it back from a GPU machine)",
        description="Write RUN_DIR's model.keras, config.json, run.json and history.csv as OUT.000, OUT.001, ... "
        "(one .npz in parts); python -m training expand rebuilds the run folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", help="a finished run folder (model.keras, config.json)")
    p.add_argument("--out", required=True, help="archive name, e.g. out/flagship.npz (parts get .000, .001, ...)")
    p.add_argument("--part-mib", type=float, default=15.0, help="largest part, MiB")
    p.set_defaults(func=_compact)


def _compact(args: argparse.Namespace) -> int:
    from training.compact import compact

    parts = compact(args.run_dir, args.out, part_bytes=int(args.part_mib * 2**20))
    print(f"{args.run_dir} -> {len(parts)} part(s), {sum(p.stat().st_size for p in parts) / 2**20:.1f} MiB")
    return 0


def _add_expand(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "expand",
        help="rebuild a run folder from the parts python -m training compact wrote",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("archive", help="archive name as given to compact --out (its parts: .000, .001, ...)")
    p.add_argument("--run-dir", required=True, help="output run folder")
    p.set_defaults(func=_expand)


def _expand(args: argparse.Namespace) -> int:
    from training.compact import expand

    print(f"expanded: {expand(args.archive, args.run_dir)}")
    return 0


def _add_teach(sub: argparse._SubParsersAction) -> None:
    from training.distill import RUNTIMES

    p = sub.add_parser(
        "teach",
        help="write an export's answers on the images a training run trains on (targets for train --teacher)",
        description="Runs the export over the train images its own training config trained on (same hold-out, "
        "same per-class limit) and writes their probabilities with the split's fingerprint; a run trained with "
        "--teacher OUT checks that it trains on the same images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("export", help="an exported version folder (or a name folder: its highest version)")
    p.add_argument("--data", default=DEFAULT_DATA, help="the data the export's networks were trained on")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="tensorflow",
        help="the SavedModel, or its compiled OpenVINO IR (python -m training compile): 3x faster on a CPU",
    )
    p.set_defaults(func=_teach)


def _teach(args: argparse.Namespace) -> int:
    from training.distill import teach

    print(f"{teach(args.export, args.data, args.out, args.runtime).source} -> {args.out}")
    return 0


#: Every command, in the order ``--help`` lists them.
COMMANDS = [
    _add_pack,
    _add_train,
    _add_evaluate,
    _add_export,
    _add_compile,
    _add_finalize,
    _add_ensemble,
    _add_recover,
    _add_compact,
    _add_expand,
    _add_teach,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    from training.data import DataError
    from training.model import WeightsUnavailableError

    try:
        return args.func(args)
    except (DataError, WeightsUnavailableError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
