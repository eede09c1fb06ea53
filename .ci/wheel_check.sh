#!/usr/bin/env bash
# The README's install without a clone, checked: build the wheel, install it into a fresh virtual environment, run a
# console script from outside the checkout and check that the installed wheel is what runs. Everything it writes is in
# one `mktemp -d` folder, removed on exit.
#
# The fresh environment reuses the dependencies already installed in the calling environment (torch, transformers,
# datasets, ... of `make test`) through a .pth path entry instead of downloading them again; `venv
# --system-site-packages` would expose the base interpreter's packages, not those of the calling virtual
# environment. A path entry adds no import hooks, so the calling environment's editable dino_hf stays invisible.
# The wheel's declared requirements are then checked against what that environment holds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS
# Built from a copy of the checkout: setuptools builds in the source tree (build/, *.egg-info/), where two builds at
# once would collide and a file deleted since the last build would still ship from build/lib.
mkdir "$work/src"
bash .ci/copy_checkout.sh . "$work/src"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$work/src"
"$PYTHON" -m venv --without-pip "$work/venv"
fresh="$work/venv/bin/python"
"$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"]); print(sysconfig.get_paths()["platlib"])' \
    > "$("$fresh" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/calling-environment.pth"
"$PYTHON" -m pip --python "$fresh" install --quiet --no-deps --ignore-installed "$work"/dist/dino_hf-*.whl
cd "$work"
"$work/venv/bin/dino-hf-knn-eval" --help > /dev/null
"$fresh" - <<'PY'
import importlib.metadata
import sys

from packaging.requirements import Requirement

import dino_hf

assert dino_hf.__file__.startswith(sys.prefix), f"{dino_hf.__file__} is not the installed wheel"
unmet = []
for line in importlib.metadata.requires("dino_hf") or []:
    requirement = Requirement(line)
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
        continue  # an extra's requirement
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is None or not requirement.specifier.contains(version, prereleases=True):
        unmet.append(f"{requirement} (found {version})")
assert not unmet, f"the wheel's requirements are not met: {unmet}"
print(f"wheel check: dino_hf {dino_hf.__version__} from its wheel, requirements met, dino-hf-knn-eval --help runs")
PY
echo "wheel check took $((SECONDS - start)) s"
