# Shared by the scripts under scripts/: install what a script needs on a fresh Debian machine,
# or say exactly what is missing and how to get it. Source it; it defines functions only.

# apt_install PACKAGE... : installs Debian packages when running as root with apt-get;
# otherwise prints the command to run and exits non-zero.
apt_install() {
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: missing: $*. Install, for example:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y $*" >&2
    exit 1
  fi
  echo "installing $* with apt-get..."
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# need_commands COMMAND=PACKAGE... : installs each package whose command is missing.
need_commands() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || missing+=("${pair#*=}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
}

# pip_install PACKAGE... : installs Python packages with pip (pip itself with apt-get when
# missing). Debian's Python refuses to install into the system without
# --break-system-packages (PEP 668); that flag is added only when pip asks for it.
pip_install() {
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt_install python3-pip
  fi
  local pip_log status=0
  pip_log=$(mktemp)
  python3 -m pip install --quiet "$@" 2>"$pip_log" || status=$?
  if [ "$status" -ne 0 ]; then
    if grep -q externally-managed "$pip_log"; then
      status=0
      python3 -m pip install --quiet --break-system-packages "$@" || status=$?
    else
      cat "$pip_log" >&2
    fi
  fi
  rm -f "$pip_log"
  return "$status"
}
