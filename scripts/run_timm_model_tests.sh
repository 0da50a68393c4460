#!/usr/bin/env bash
# Run timm's own model test suite (tests/test_models.py of the installed timm's sdist) on every simwnw_* model.
#
# Not part of CI: it downloads the timm sdist from PyPI. The simwnw_vit_* models are added to the suite's
# NON_STD_FILTERS, where timm puts its own ViTs (fixed input size, token layout), as issue 14 asks.
#
#   scripts/run_timm_model_tests.sh            # -k simwnw
#   scripts/run_timm_model_tests.sh -x -q      # extra pytest arguments
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="$(python -c 'import timm; print(timm.__version__)')"
WORK="${TIMM_SDIST_DIR:-$(mktemp -d)}"
if [ ! -d "$WORK/timm-$VERSION/tests" ]; then
    pip download --quiet --no-deps --no-binary :all: "timm==$VERSION" -d "$WORK"
    tar xzf "$WORK/timm-$VERSION.tar.gz" -C "$WORK"
fi
# the tests alone, away from the sdist's timm/ source tree, so the installed timm is the one tested
SUITE="$WORK/suite"
if [ ! -d "$SUITE/tests" ]; then mkdir -p "$SUITE" && cp -r "$WORK/timm-$VERSION/tests" "$SUITE/"; fi
TESTS="$SUITE/tests"
# timm's ViT-like models are tested by the non-standard cfg tests; so are ours
grep -q "'simwnw_vit\*'" "$TESTS/test_models.py" || \
    sed -i "s/^NON_STD_FILTERS = \[/NON_STD_FILTERS = ['simwnw_vit*', /" "$TESTS/test_models.py"
# register the simwnw_* architectures before test_models.py builds its parameter lists
grep -q "import simwnw_hf" "$TESTS/conftest.py" || printf '\nimport simwnw_hf  # noqa: F401,E402\n' >> "$TESTS/conftest.py"
cd "$SUITE"
PYTHONPATH="$REPO" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" python -m pytest tests/test_models.py -k simwnw \
    -p no:cacheprovider --rootdir "$TESTS" "$@"
