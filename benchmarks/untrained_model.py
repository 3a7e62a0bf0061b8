"""Export an *untrained* model of a given architecture, for throughput benchmarks only.

The flagship (ResNet50V2 at 224x224) has not been trained on this machine (it needs a GPU, README "The shipped
model"), but its inference cost does not depend on its weights. This writes a SavedModel + metadata.json with the
flagship's exact architecture and random weights, through the training package's own export, so that
``benchmarks/loadgen.py --model-dir <out>/<name>`` measures what the service delivers with a model of that size.
Its answers are meaningless: never serve it. The metadata's name says ``untrained``.

    python -m benchmarks.untrained_model --out /tmp/bench-models          # resnet50v2-224-untrained/1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="models root to write <name>/1 into")
    parser.add_argument("--backbone", default="resnet50v2")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--color-mode", default="grayscale", choices=("grayscale", "rgb"))
    args = parser.parse_args(argv)

    from training.config import ArchConfig, TrainConfig
    from training.export import export_model
    from training.model import build_inference_model

    config = TrainConfig(
        arch=ArchConfig(backbone=args.backbone, input_size=args.input_size, color_mode=args.color_mode, weights="none")
    )
    name = f"{args.backbone}-{args.input_size}-untrained"
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "model.keras"
        build_inference_model(config.arch, pretrained=False).save(model_path)
        config.save(Path(tmp) / "config.json")
        out = export_model(model_path, args.out, name=name, version="1", force=True)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
