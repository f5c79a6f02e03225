"""The build commands of ``imgserve``: build-default, build, verify, train, build-resnet50."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path


def _build_default(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from trt_build.default_model.build import build_default_model

    path = build_default_model(Path(args.repository), force=args.force)
    print(path)
    return 0


def _build_resnet50(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from trt_build.resnet50 import build_resnet50_random

    print(build_resnet50_random(Path(args.repository), force=args.force))
    return 0


def _build(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from trt_build.builder import BuildRequest, VerificationFailed, build
    from trt_build.tftrt import TensorRTUnavailable

    request = BuildRequest(
        source=args.source,
        target=args.target,
        precision=args.precision,
        output=args.output,
        max_batch_size=args.max_batch_size,
        calibration_dir=args.calibration_dir,
        eval_dir=args.eval_dir,
        eval_count=args.eval_count,
        min_top1_agreement=args.min_top1_agreement,
        decided_probability=args.decided_probability,
    )
    try:
        manifest = build(request)
    except TensorRTUnavailable as exc:
        print(f"imgserve build: {exc}", file=sys.stderr)
        return 2
    except VerificationFailed as exc:
        print(f"imgserve build: {exc}\n{json.dumps(exc.verification.as_dict(), indent=2)}", file=sys.stderr)
        return 1
    print(json.dumps(manifest.build, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from model_contract.manifest import ModelManifest
    from trt_build.eval_images import evaluation_tensors
    from trt_build.verify import Gate, served_model, verify

    source = ModelManifest.read(args.source)
    built = ModelManifest.read(args.built)
    # Decoded as the built version is served (its manifest's preprocessing, decode mode included).
    images = evaluation_tensors(built.preprocessing, args.eval_count, folder=args.eval_dir)
    precision = (built.build or {}).get("precision", "fp32")
    gate = Gate.for_precision(precision, args.min_top1_agreement, args.decided_probability)
    source_artifact = source.artifact_path(args.source, source.runtime)
    built_artifact = built.artifact_path(args.built, built.runtime)
    with served_model(source, args.source) as source_model, served_model(built, args.built) as built_model:
        result = verify(source_model, source_artifact, built_model, built_artifact, images, gate)
    print(json.dumps(result.as_dict(), indent=2))
    return 0 if result.passed else 1


def _train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from trt_build.train.errors import TrainingRefused
    from trt_build.train.head import Schedule
    from trt_build.train.pipeline import TrainRequest, default_cache_dir, train
    from trt_build.train.publish import ExportMismatch
    from trt_build.train.report import BelowBaseline

    try:
        request = TrainRequest(
            data_dir=args.data_dir,
            output=args.output,
            base=args.base,
            validation_fraction=args.validation_fraction,
            seed=args.seed,
            augment_copies=args.augment_copies,
            flip=args.flip,
            schedule=Schedule(
                learning_rate=args.learning_rate,
                batch_size=args.batch_size,
                max_epochs=args.epochs,
                patience=args.patience,
            ),
            fine_tune_blocks=args.fine_tune_blocks,
            fine_tune_learning_rate=args.fine_tune_learning_rate,
            min_margin=args.min_margin,
            cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir()),
        )
        manifest = train(request)
    except TrainingRefused as exc:
        print(f"imgserve train: {exc}", file=sys.stderr)
        return 2
    except BelowBaseline as exc:
        print(f"imgserve train: {exc}\n{json.dumps(exc.report, indent=2)}", file=sys.stderr)
        return 1
    except ExportMismatch as exc:
        print(
            f"imgserve train: {exc}. A stale feature cache is a likely cause (features computed by other code "
            "or libraries): run again with --no-cache",
            file=sys.stderr,
        )
        return 3
    except Exception:
        traceback.print_exc()
        print("imgserve train: failed with the error above; nothing was published", file=sys.stderr)
        return 4
    print(json.dumps(manifest.build, indent=2))
    return 0


def _add_train_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from trt_build.train.backbone import BASES
    from trt_build.train.data import MAX_FILE_BYTES
    from trt_build.train.report import MIN_MARGIN

    train = commands.add_parser(
        "train",
        help="train a classifier for your own classes (a new head on a frozen ImageNet backbone) and publish it",
        description="DATA_DIR holds one sub-folder of images per class; the class names are the folder names. "
        f"Files that cannot be used (undecodable, over {MAX_FILE_BYTES >> 20} MiB, repeated, in no class folder) "
        "are skipped and listed in the report. The version is published only if its validation accuracy beats "
        "the majority-class baseline by --min-margin. Exit codes: 0 published; 1 below the baseline (nothing "
        "published; the report follows the message); 2 refused (bad data or settings, nothing written); 3 the "
        "exported model does not give the trained model's answers (nothing published; try --no-cache); 4 any "
        "other error (nothing published; a traceback says where).",
    )
    train.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="one sub-folder of images per class")
    train.add_argument(
        "--output", type=Path, required=True, help="new version folder, e.g. models/my_classes/1 (REPO/NAME/VERSION)"
    )
    train.add_argument(
        "--base", default="efficientnet_lite0", help=f"pretrained backbone (available: {', '.join(sorted(BASES))})"
    )
    train.add_argument(
        "--validation-fraction", type=float, default=0.2, help="share of each class held out (default 0.2)"
    )
    train.add_argument("--seed", type=int, default=0, help="seeds the split, the copies and the weights")
    train.add_argument(
        "--augment-copies", type=int, default=2, help="re-framed copies of each training image (default 2)"
    )
    train.add_argument(
        "--no-flip",
        dest="flip",
        action="store_false",
        help="do not mirror copies (for classes a mirror changes: text, digits, left and right)",
    )
    train.add_argument("--epochs", type=int, default=100, help="most epochs (early stopping ends sooner)")
    train.add_argument("--patience", type=int, default=5, help="epochs without a better validation loss (default 5)")
    train.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's, for the head (default 1e-3)")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument(
        "--fine-tune-blocks", type=int, default=0, help="then train the top K backbone blocks too (default 0)"
    )
    train.add_argument(
        "--fine-tune-learning-rate", type=float, default=1e-5, help="Adam's, while fine-tuning (default 1e-5)"
    )
    train.add_argument(
        "--min-margin",
        type=float,
        default=MIN_MARGIN,
        help=f"least validation accuracy over the majority-class baseline to publish (default {MIN_MARGIN})",
    )
    train.add_argument(
        "--cache-dir",
        type=Path,
        help="feature cache folder (default: $XDG_CACHE_HOME/imgserve/features, else ~/.cache/imgserve/features)",
    )
    train.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    train.set_defaults(run=_train)


def _add_gate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-top1-agreement", type=float, help="override the precision's threshold (fp16 0.995, int8 0.99)"
    )
    parser.add_argument(
        "--decided-probability",
        type=float,
        help="images count for top-1 agreement when the source gives its top class at least this (default 0.5; "
        "0 counts every image)",
    )


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    build = commands.add_parser("build-default", help="build EfficientNet-Lite0 into the model repository")
    build.add_argument("--repository", default="models", help="model repository (default ./models)")
    build.add_argument("--force", action="store_true", help="rebuild even if already built")
    build.set_defaults(run=_build_default)

    optimize = commands.add_parser("build", help="build an optimized version (LiteRT, TF-TRT) and verify it")
    optimize.add_argument("source", type=Path, help="source version folder, e.g. models/efficientnet_lite0/1")
    optimize.add_argument("--target", choices=["litert", "tftrt"], required=True)
    optimize.add_argument("--precision", choices=["fp32", "fp16", "dynamic", "int8"], default="fp32")
    optimize.add_argument(
        "--output", type=Path, required=True, help="new version folder, e.g. models/efficientnet_lite0/2"
    )
    optimize.add_argument("--max-batch-size", type=int, default=32, help="largest batch engines are built for")
    optimize.add_argument("--calibration-dir", type=Path, help="images for int8 calibration (default: packaged photos)")
    optimize.add_argument("--eval-dir", type=Path, help="images to verify on (default: packaged photos + variations)")
    optimize.add_argument("--eval-count", type=int, default=300, help="how many images to verify on")
    _add_gate_arguments(optimize)
    optimize.set_defaults(run=_build)

    check = commands.add_parser("verify", help="compare a built version with its source on real images")
    check.add_argument("source", type=Path)
    check.add_argument("built", type=Path)
    check.add_argument("--eval-dir", type=Path)
    check.add_argument("--eval-count", type=int, default=300)
    _add_gate_arguments(check)
    check.set_defaults(run=_verify)

    _add_train_command(commands)

    resnet = commands.add_parser(
        "build-resnet50", help="build ResNet50 with RANDOM weights (a throughput model) for the keras_jax runtime"
    )
    resnet.add_argument("--repository", default="models_gpu", help="model repository (default ./models_gpu)")
    resnet.add_argument("--force", action="store_true", help="rebuild even if already built")
    resnet.set_defaults(run=_build_resnet50)
