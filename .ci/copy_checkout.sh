#!/usr/bin/env bash
# copy_checkout.sh REPO DEST: the files of the checkout REPO (tracked and untracked, not the ignored ones such as
# .venv/, build/, dist/ or *.egg-info/) into the existing folder DEST, so that a build or test there neither reads
# stale build output nor writes into the checkout.
set -euo pipefail
repo=$1
dest=$2
if git -C "$repo" rev-parse --is-inside-work-tree > /dev/null 2>&1; then
    # --ignore-failed-read: a tracked file deleted in the working tree is left out, as in the checkout.
    git -C "$repo" ls-files -z --cached --others --exclude-standard \
        | tar -C "$repo" --null --ignore-failed-read -T - -cf - | tar -xf - -C "$dest"
else
    tar -C "$repo" --exclude=.git --exclude=.venv --exclude=build --exclude=dist --exclude='*.egg-info' -cf - . \
        | tar -xf - -C "$dest"
fi
