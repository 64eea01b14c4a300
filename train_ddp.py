"""Train the chapter's DCGAN on Kuzushiji-MNIST.

    accelerate launch train_ddp.py                          # the accelerate config decides devices/processes
    accelerate launch --config_file launch/cpu_multi_process.yaml train_ddp.py --split test   # 2 CPU processes
    python train_ddp.py --split test --max-steps 100         # plain single process
"""

from __future__ import annotations

import sys

from gan.checkpointing import CheckpointError
from gan.config import parse_config
from gan.data import DataError
from gan.trainer import NonFiniteLossError, PreemptedError, SetupError, train


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        train(config)
    except SetupError as error:
        print(f"train_ddp.py: error: invalid arguments for this launch:\n{error}", file=sys.stderr)
        return 2
    except DataError as error:
        print(f"train_ddp.py: data error: {error}", file=sys.stderr)
        return 1
    except CheckpointError as error:
        print(f"train_ddp.py: checkpoint error: {error}", file=sys.stderr)
        return 1
    except NonFiniteLossError as error:
        print(f"train_ddp.py: error: {error}", file=sys.stderr)
        return 1
    except PreemptedError as error:
        print(f"train_ddp.py: {error}; continue with --resume latest", file=sys.stderr, flush=True)
        return 128 + error.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
