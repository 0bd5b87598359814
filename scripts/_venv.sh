# Sourced by scripts/up and scripts/test: make ./.venv hold Kiln with its pinned dependencies.
if [ ! -x .venv/bin/python ] || [ pyproject.toml -nt .venv/.kiln-installed ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
    touch .venv/.kiln-installed
fi
