#!/usr/bin/env bash
# The supported version range, tested. One venv per (Python, TensorFlow, Keras) pair, each held by
# a constraints file in .ci/constraints/, run one after the other (the newest pair is `make test`'s
# .venv, held by .ci/constraints/newest.txt).
#
#   .ci/versions.sh                      every pair below, sequentially (CI: `make test-versions`)
#   .ci/versions.sh floor                one pair, its tests
#   .ci/versions.sh middle -x tests/test_models.py    one pair, these pytest arguments instead
#   .ci/versions.sh --setup floor        create / refresh the pair's venv only
#
# VENV_ROOT (default .venvs/) holds the venvs; a venv is rebuilt only when its constraints file,
# setup.cfg or its interpreter changes. PYTHON310 / PYTHON312 name the interpreters.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_ROOT=${VENV_ROOT:-.venvs}

# The core files: the engine, the optimizers and the Keras internals, without the trainers.
CORE_TESTS="tests/test_keras_internals.py tests/test_optimizers.py tests/test_per_example.py \
tests/test_coherence.py tests/test_layer_rules.py tests/test_models.py tests/test_training.py \
tests/test_robust.py tests/test_package.py"

# name | interpreter | tests ("full" = the whole suite, as `make test`; "core" = CORE_TESTS)
find_python() {  # find_python X.Y -> an interpreter of that version: on the PATH, else pyenv's
  local version=$1 found
  if "python$version" -c 'import sys' 2>/dev/null; then echo "python$version"; return; fi
  local root=${PYENV_ROOT:-$HOME/.pyenv}
  if command -v pyenv >/dev/null 2>&1; then root=$(pyenv root); fi
  for found in "$root"/versions/"$version".*/bin/python"$version"; do
    if [[ -x $found ]]; then echo "$found"; return; fi
  done
  echo "python$version"  # not found: setup_venv says so in one line
}

PAIRS=(
  "floor  ${PYTHON310:-$(find_python 3.10)} full"
  "middle ${PYTHON312:-$(find_python 3.12)} core"
)

pair_field() {  # pair_field NAME FIELD_INDEX
  local row
  for row in "${PAIRS[@]}"; do
    read -r -a fields <<<"$row"
    if [[ ${fields[0]} == "$1" ]]; then echo "${fields[$2]}"; return; fi
  done
  echo "unknown version pair '$1'; known: $(printf '%s ' "${PAIRS[@]%% *}")" >&2
  exit 2
}

setup_venv() {  # setup_venv NAME -> prints the venv's python
  local name=$1 python venv key
  python=$(pair_field "$name" 1)
  if ! "$python" -c 'import sys' 2>/dev/null; then
    echo "[$name] no working interpreter '$python'; set PYTHON310 / PYTHON312 to its path" >&2
    exit 2
  fi
  venv=$VENV_ROOT/$name
  key=$(cat ".ci/constraints/$name.txt" setup.cfg <("$python" -VV) | sha256sum | cut -c1-16)
  if [[ ! -f $venv/.installed-$key ]]; then
    echo "[$name] creating $venv with $("$python" -V 2>&1) and .ci/constraints/$name.txt" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet -c ".ci/constraints/$name.txt" -e '.[test]' >&2
    touch "$venv/.installed-$key"
  fi
  echo "$venv/bin/python"
}

run_pair() {  # run_pair NAME [pytest args]
  local name=$1 py tests start
  shift
  py=$(setup_venv "$name")
  if [[ $# -gt 0 ]]; then tests=("$@")
  elif [[ $(pair_field "$name" 2) == full ]]; then tests=(-n 2 --dist loadfile tests)
  else read -r -a tests <<<"-n 2 --dist loadfile $CORE_TESTS"
  fi
  echo "[$name] $("$py" -c 'import sys, tensorflow as tf, keras; print(f"Python {sys.version.split()[0]}, TF {tf.__version__}, Keras {keras.__version__}")' 2>/dev/null)" >&2
  start=$SECONDS
  "$py" -m pytest "${tests[@]}"
  echo "[$name] passed in $((SECONDS - start)) s" >&2
}

if [[ ${1:-} == --setup ]]; then setup_venv "$2" >/dev/null; exit; fi
if [[ $# -gt 0 ]]; then run_pair "$@"; exit; fi
for row in "${PAIRS[@]}"; do run_pair "${row%% *}"; done
