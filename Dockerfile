# kmnist-gan training image: `accelerate launch train_ddp.py` on the GPUs Docker gives it.
#
#   docker build -t kmnist-gan .
#   docker run --gpus all --ipc=host --init -v "$PWD/data:/app/data" -v "$PWD/runs:/app/runs" kmnist-gan
#   docker run --gpus all --ipc=host --init -v "$PWD/data:/app/data" -v "$PWD/runs:/app/runs" \
#       -e WANDB_API_KEY -e WANDB_MODE=online kmnist-gan \
#       --config_file launch/multi_gpu.yaml --num_processes 4 train_ddp.py --epochs 20 --run-name big
#
# The entry point (launch/docker-entrypoint.sh) runs `accelerate launch` and hands `docker stop`'s SIGTERM to the
# trainers. The arguments of `docker run` replace CMD and go to `accelerate launch`: accelerate's own options first, then
# train_ddp.py and its flags. Data and runs are volumes (/app/data and /app/runs, the trainer's default --data-dir and
# --output-dir); the container runs as an unprivileged user whose uid (USER_ID, default 1000) must be able to write
# both host folders (`docker build --build-arg USER_ID="$(id -u)"` makes it yours). W&B credentials and mode are
# never part of the image: pass them at run time (-e WANDB_API_KEY -e WANDB_MODE); without them the run logs
# offline into its run folder. `docker stop` sends SIGTERM: the run checkpoints and exits (allow it time with
# `docker stop --time 60`); start it again with `train_ddp.py --run-name NAME --resume latest` to continue.
FROM pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The dependencies get their own layer, rebuilt only when pyproject.toml changes: the README's `pip install -e .`
# runs on an empty `gan` package, and the editable install finds the real one that the COPY below puts in its place.
# The image's PyTorch satisfies the torch/torchvision requirements and is kept.
COPY pyproject.toml README.md ./
RUN mkdir gan \
    && touch gan/__init__.py \
    && pip install --no-cache-dir -e . \
    && rm -rf gan

COPY . .

ARG USER_ID=1000
RUN if ! getent passwd "${USER_ID}" >/dev/null; then \
        useradd --no-log-init --create-home --uid "${USER_ID}" --shell /bin/bash trainer; \
    fi \
    && mkdir -p /app/data /app/runs \
    && chown "${USER_ID}" /app/data /app/runs
USER ${USER_ID}

VOLUME ["/app/data", "/app/runs"]

ENTRYPOINT ["launch/docker-entrypoint.sh"]
CMD ["train_ddp.py"]
