#!/usr/bin/env bash
# The image's entry point: `accelerate launch "$@"`, with SIGTERM/SIGINT handed to the training processes and the
# container kept until they have checkpointed and exited.
#
# `docker stop` and Kubernetes signal the container's first process. Signalled directly, accelerate's launcher
# dies at once (one process) and the container ends with it, killing the trainer before its checkpoint is
# written. Here the signal goes to the launcher's children (the trainers, or torchrun's workers), which
# checkpoint and exit; the launcher then exits on its own and this script returns its status.
set -u

accelerate launch --quiet "$@" &
launcher=$!

children_of() {  # procps (pgrep) is not in every base image: read /proc
    local status key value
    for status in /proc/[0-9]*/status; do
        while read -r key value; do
            if [[ $key == PPid: ]]; then
                [[ $value == "$1" ]] && basename "$(dirname "$status")"
                break
            fi
        done < "$status" 2>/dev/null
    done
}

forward() {
    local children
    children=$(children_of "$launcher")
    if [[ -n $children ]]; then
        kill "-$1" $children 2>/dev/null || true  # word splitting: one pid per word
    else
        kill "-$1" "$launcher" 2>/dev/null || true
    fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT

while true; do
    wait "$launcher"  # returns early when a trapped signal arrives
    status=$?
    kill -0 "$launcher" 2>/dev/null || break
done
exit "$status"
