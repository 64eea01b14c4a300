"""Export a training run's generator to one verified ONNX file: ``python export.py [RUN_DIR] [--fp16]``.

The logic lives in ``gan/export.py``; this file only parses, builds and runs. Exit status 1 (and a message
naming the file and what to do) when a run file is missing or corrupt or a verification check fails.
"""

from __future__ import annotations

import sys

from gan.artifacts import ArtifactError
from gan.export import ExportError, parse_export_config, run_export


def main(argv: list[str] | None = None) -> int:
    config = parse_export_config(argv)
    try:
        run_export(config)
    except (ArtifactError, ExportError) as error:
        print(f"export.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
