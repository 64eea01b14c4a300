"""Export a training run's generator to one verified ONNX file: ``python export.py [RUN_DIR] [--fp16]``.

The logic lives in ``gan/export.py``; this file only parses, builds and runs. Exit status 2 for invalid flags
or paths (all listed at once), 1 (and a message naming the file and what to do) when a run file is missing,
corrupt or holds NaN/inf weights, a verification check fails, a file cannot be written or (with --push-to-hub) the
upload fails after the local files were written.
"""

from __future__ import annotations

import sys

from gan.artifacts import ArtifactError
from gan.export import ExportError, parse_export_config, run_export
from gan.hub import HubError


def main(argv: list[str] | None = None) -> int:
    config = parse_export_config(argv)
    try:
        run_export(config)
    except (ArtifactError, ExportError, HubError) as error:
        print(f"export.py: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the paths were checked, but a disk can still fill up or go away while writing
        print(
            f"export.py: error: cannot write {error.filename or 'the exported files'} ({error.strerror or error}); "
            f"no file was replaced. Free some space or choose another --output.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
