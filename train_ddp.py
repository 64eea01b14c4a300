"""Train the chapter's DCGAN on Kuzushiji-MNIST.

accelerate launch train_ddp.py                         # the accelerate config decides devices/processes
accelerate launch --config_file launch/cpu_2proc.yaml train_ddp.py --split test   # 2 gloo processes on CPU
python train_ddp.py --cpu --split test --max-steps 100    # plain single process
"""

from __future__ import annotations

import sys

from gan.config import parse_config
from gan.data import DataError
from gan.trainer import SetupError, train


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
