"""Train the chapter's DCGAN on Kuzushiji-MNIST.

    accelerate launch train_ddp.py                          # the accelerate config decides devices/processes
    accelerate launch --config_file launch/cpu_multi_process.yaml train_ddp.py --split test   # 2 CPU processes
    python train_ddp.py --split test --max-steps 100         # plain single process
"""

from __future__ import annotations

import errno
import os
import sys

from gan.checkpointing import CheckpointError
from gan.config import SetupError, parse_config
from gan.data import DataError
from gan.preemption import follow_launcher
from gan.trainer import NonFiniteLossError, PreemptedError, PublishError, train

# What each expected failure prints (after "train_ddp.py: ") and its exit status; anything else is a bug: traceback.
FAILURES = (
    (SetupError, "error: invalid arguments for this launch:\n", 2),
    (DataError, "data error: ", 1),
    (CheckpointError, "checkpoint error: ", 1),
    (NonFiniteLossError, "error: ", 1),
    (PublishError, "publish error: ", 1),
)
# File-system refusals (full disk, quota, read-only mount, permissions) while writing the run's files.
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def main(argv: list[str] | None = None) -> int:
    follow_launcher()  # a SIGTERM that kills accelerate's one-process launcher reaches this process too
    config = parse_config(argv)
    # Every process meets the same failure (the trainer agrees on them across processes): one per machine says it.
    speaks = os.environ.get("LOCAL_RANK", "0") == "0"
    try:
        train(config)
    except PreemptedError as error:
        if speaks:
            print(f"train_ddp.py: {error}", file=sys.stderr, flush=True)
        return 128 + error.signum
    except tuple(kind for kind, _, _ in FAILURES) as error:
        prefix, status = next((p, s) for kind, p, s in FAILURES if isinstance(error, kind))
        if speaks:
            print(f"train_ddp.py: {prefix}{error}", file=sys.stderr, flush=True)
        return status
    except OSError as error:
        if error.errno not in WRITE_ERRORS:
            raise
        if speaks:
            print(f"train_ddp.py: error: could not write {error.filename or 'a file'} ({error.strerror}); the "
                  f"checkpoints written so far are intact", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
