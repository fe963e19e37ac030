"""`adderize convert`: convert a timm model and report every layer; with ``--calibrate``,
the label-free conversion of a pretrained model (:mod:`adderize.train.labelfree`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from adderize._errors import AdderizeError
from adderize.cli._common import (
    COUNT,
    POSITIVE,
    POSITIVE_INT,
    add_model_source,
    mapping_arg,
    model_kwargs,
    output_path,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("convert", help="convert a timm model and report every layer")
    add_model_source(parser, saved=False)
    parser.add_argument(
        "--out",
        help="write the converted model here (safetensors format, whatever the suffix; no pickle)",
    )
    parser.add_argument("--report", action="store_true", help="print the per-layer table")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail if a layer the mapping asks to convert cannot be",
    )
    lf = parser.add_argument_group(
        "label-free conversion of a pretrained model (no labels: refit, calibrate, move to "
        "the ops, fold; see adderize.train.labelfree)"
    )
    lf.add_argument(
        "--calibrate",
        metavar="IMAGES",
        help="unlabelled images: a folder of image files or an .npy (uint8 images, or float "
        "[N,3,H,W] preprocessed); preprocessing is the model's timm data config",
    )
    lf.add_argument(
        "--preserve",
        action="store_true",
        help="function-preserving conversion (implied by --calibrate, which it needs)",
    )
    lf.add_argument("--refit-steps", type=COUNT, default=0, help="adder weight refit batches")
    lf.add_argument("--refit-lr", type=POSITIVE, default=0.04)
    lf.add_argument(
        "--distill-steps", type=COUNT, default=0, help="distil from the original on crops"
    )
    lf.add_argument("--distill-lr", type=POSITIVE, default=1e-4)
    lf.add_argument("--batch-size", type=POSITIVE_INT, default=16)
    lf.add_argument(
        "--budget",
        type=POSITIVE,
        default=0.5,
        help="with --ops auto: energy budget, a fraction of the all-conv model's",
    )
    lf.add_argument(
        "--reestimate-bn", action="store_true", help="re-estimate BatchNorm on the images"
    )
    parser.set_defaults(func=run)


def _label_free(args: argparse.Namespace, out: Any) -> int:
    import json

    import adderize
    from adderize.train.labelfree import LabelFreeConfig, convert_pretrained

    if out is None:
        raise AdderizeError("--calibrate converts a pretrained model: give --out FILE to keep it")
    if args.pretrained_file is None:
        print("adderize: no --pretrained-file: converting random weights", file=sys.stderr)
    config = LabelFreeConfig(
        refit_steps=args.refit_steps,
        refit_lr=args.refit_lr,
        batch_size=args.batch_size,
        reestimate_bn=args.reestimate_bn,
        distill_steps=args.distill_steps,
        distill_lr=args.distill_lr,
        budget=args.budget,
    )
    kwargs = model_kwargs(args)
    float_model = adderize.create_float_model(
        args.model, pretrained_file=args.pretrained_file, **kwargs
    )
    ops = "auto" if args.ops == "auto" else mapping_arg(args.ops)
    model, result = convert_pretrained(float_model, args.calibrate, ops, keep=args.keep,
                                       config=config)  # fmt: skip
    print(result.table())
    path = adderize.save(model, out, model_name=args.model, model_kwargs=kwargs)
    report = path.with_name(path.stem + ".report.json")
    report.write_text(json.dumps(dataclasses.asdict(result), indent=1))
    print(f"saved {path} (reload with adderize.load({str(path)!r})) and {report}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    import adderize

    out = output_path(args.out, args.pretrained_file) if args.out else None
    if args.calibrate is not None:
        return _label_free(args, out)
    if args.ops == "auto":
        raise AdderizeError("--ops auto measures each layer on data: give --calibrate IMAGES")
    if args.preserve or args.refit_steps or args.distill_steps or args.reestimate_bn:
        raise AdderizeError(
            "--preserve, --refit-steps, --distill-steps and --reestimate-bn need --calibrate "
            "IMAGES (a preserving conversion is finished on data before it can be saved)"
        )
    model, report = adderize.create_model(
        args.model,
        mapping_arg(args.ops),
        keep=args.keep,
        pretrained_file=args.pretrained_file,
        strict=args.strict,
        return_report=True,
        **model_kwargs(args),
    )
    if args.json:
        print(report.to_json())
    elif args.report:
        print(report)
    else:
        print(report.summary())
    if out is not None:
        path = adderize.save(model, out)
        print(f"saved {path} (reload with adderize.load({str(path)!r}))", file=sys.stderr)
    return 0
