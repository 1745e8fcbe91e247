# Sourced by setup.sh, demo.sh and test.sh (from the repository root): which Python environment to use.
#   an active virtualenv ($VIRTUAL_ENV)  -> that one
#   else ./.venv (made by setup.sh)      -> activate it
#   else                                 -> the python3 on PATH
# setup.sh makes ./.venv when the python3 on PATH refuses pip installs (PEP 668 "externally-managed-
# environment": Debian's and Ubuntu's system Python), so both README commands work there as they are.

# True when python3 is a system Python that refuses `pip install` outside a virtualenv.
tm_externally_managed() {
  python3 - <<'PY'
import pathlib, sys, sysconfig
inside_venv = sys.prefix != sys.base_prefix
marker = pathlib.Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED"
sys.exit(0 if marker.exists() and not inside_venv else 1)
PY
}

if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
