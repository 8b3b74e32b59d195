#!/bin/sh
# Every install step of the container images (Dockerfile, Dockerfile.gpu), in one script that
# CI also runs on the host (tests/integration/test_image_install.py): the image's install is
# proved where no container can be built.
#
#   install_image.sh system                  the shared libraries MXNet's wheel links and
#                                            $SYSTEM_PACKAGES (apt-get; run as root)
#   install_image.sh python PREFIX SOURCE    a virtual environment at PREFIX holding mxserve
#                                            from SOURCE (a checkout) and its dependencies
#
# Environment: PYTHON, the interpreter the venv is made from (default python3);
# MXNET_PACKAGE, the engine's wheel (default: pyproject.toml's CPU mxnet; the GPU image
# sets the CUDA build that matches its base image).
set -eu

system() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # libgomp1, libquadmath0: linked by libmxnet.so and absent from slim images.
    # shellcheck disable=SC2086  # SYSTEM_PACKAGES is a list
    apt-get install -y -q --no-install-recommends libgomp1 libquadmath0 ${SYSTEM_PACKAGES:-}
    rm -rf /var/lib/apt/lists/*
}

python_env() {
    prefix=$1
    source=$2
    python=${PYTHON:-python3}
    "$python" -m venv "$prefix"
    "$prefix/bin/python" -m pip install -q --upgrade pip
    requirements=$(mktemp)
    # pyproject.toml's dependencies, the engine swapped for MXNET_PACKAGE when it is set.
    "$prefix/bin/python" - "$source/pyproject.toml" "${MXNET_PACKAGE:-}" >"$requirements" <<'EOF'
import re
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    dependencies = tomllib.load(f)["project"]["dependencies"]
engine = sys.argv[2]
for requirement in dependencies:
    if engine and re.match(r"mxnet\b(?![-_])", requirement):
        requirement = engine
    print(requirement)
EOF
    "$prefix/bin/python" -m pip install -q -r "$requirements"
    rm -f "$requirements"
    # --no-deps: its dependencies are installed above, with the engine the image chose.
    "$prefix/bin/python" -m pip install -q --no-deps "$source"
    "$prefix/bin/mxserve" --version
    "$prefix/bin/python" -c "import mxnet, cv2; print('mxnet', mxnet.__version__)"
}

case "${1:-}" in
    system) system ;;
    python) [ $# -eq 3 ] || { echo "usage: $0 python PREFIX SOURCE" >&2; exit 2; }
            python_env "$2" "$3" ;;
    *) echo "usage: $0 system | python PREFIX SOURCE" >&2; exit 2 ;;
esac
