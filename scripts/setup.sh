# Shared set-up for scripts/run and scripts/test (sourced, not executed).
# Idempotent: each step is skipped when what it makes is already there and current.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
DATA_DIR="${ORCAPULSE_DATA_DIR:-$ROOT/data}"  # git-ignored: the database, logs, this installation's sandbox secrets
VENV="$ROOT/.venv"
BUN_VERSION="1.4.4"
NODE_MIN_VERSION="22.22.0"  # Reflex 0.10 warns below this
NODE_PACKAGE_VERSION="22.23.5"  # node-linux-<arch> on the npm registry: the Node binary as an npm package

log() { printf '\033[1;35m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

apt_install() {
  log "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q "$@" >/dev/null 2>&1 || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q "$@" >/dev/null; }
}

find_python() {
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$candidate"; return
    fi
  done
  die "Python 3.11 is required"
}

# Python packages, pinned by requirements.lock; $1 is the extras ("" or "[test]").
setup_python() {
  local extras="${1:-}" stamp
  [ -x "$VENV/bin/python" ] || { log "creating virtualenv .venv"; "$(find_python)" -m venv "$VENV"; }
  stamp="$VENV/.installed-$(cat "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)${extras//[^a-z]/}"
  if [ ! -f "$stamp" ]; then
    log "installing Python packages (pinned in requirements.lock)"
    "$VENV/bin/pip" install -q --no-compile --disable-pip-version-check -c "$ROOT/requirements.lock" -e "$ROOT$extras" 2>&1 \
      | grep -v "^WARNING: Location" >&2 || true
    "$VENV/bin/python" -c 'import orcapulse_billing, reflex' || die "Python packages did not install"
    touch "$stamp"
  fi
}

version_at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }

# bun from the npm registry into .tools/ (Reflex's own installer needs the internet), and Node >= 22.22
# for Reflex: the machine's own when new enough, otherwise Node 22 from the npm registry into .tools/ (the
# node-linux-<arch> package carries the official binary), first on PATH. One npm call for what is missing.
# Download caches that are already set (BUN_INSTALL_CACHE_DIR, npm's cache) are kept: CI shares them.
setup_bun() {
  local system_node arch node_dir="" wanted=() packages=()
  export NPM_CONFIG_REGISTRY="${NPM_CONFIG_REGISTRY:-$(npm config get registry 2>/dev/null)}"
  system_node="$(node --version 2>/dev/null || true)"
  if [ -z "$system_node" ] || ! version_at_least "${system_node#v}" "$NODE_MIN_VERSION"; then
    case "$(uname -m)" in
      x86_64 | amd64) arch=x64 ;;
      aarch64 | arm64) arch=arm64 ;;
      *) die "Reflex needs Node >= $NODE_MIN_VERSION (found ${system_node:-none}); the npm registry has no Node for $(uname -m)" ;;
    esac
    node_dir="$TOOLS/node_modules/node-linux-$arch/bin"
    if [ "$("$node_dir/node" --version 2>/dev/null)" != "v$NODE_PACKAGE_VERSION" ]; then
      wanted+=("Node $NODE_PACKAGE_VERSION (the machine has ${system_node:-none})")
      packages+=("node-linux-$arch@$NODE_PACKAGE_VERSION")
    fi
  fi
  if [ "$("$TOOLS/node_modules/.bin/bun" --version 2>/dev/null)" != "$BUN_VERSION" ]; then
    wanted+=("bun $BUN_VERSION")
    packages+=("bun@$BUN_VERSION")
  fi
  if [ "${#packages[@]}" -gt 0 ]; then
    log "installing $(IFS=,; echo "${wanted[*]}" | sed 's/,/ and /g') from the npm registry into .tools/"
    mkdir -p "$TOOLS"
    npm install --silent --no-fund --no-audit --save-exact --prefix "$TOOLS" "${packages[@]}" >/dev/null
  fi
  if [ -n "$node_dir" ]; then
    [ "$("$node_dir/node" --version 2>/dev/null)" = "v$NODE_PACKAGE_VERSION" ] || die "Node $NODE_PACKAGE_VERSION did not install"
    case ":$PATH:" in *":$node_dir:"*) ;; *) export PATH="$node_dir:$PATH" ;; esac
  fi
  [ "$("$TOOLS/node_modules/.bin/bun" --version 2>/dev/null)" = "$BUN_VERSION" ] || die "bun $BUN_VERSION did not install"
  export REFLEX_BUN_PATH="$TOOLS/node_modules/.bin/bun"
  export REFLEX_DIR="$TOOLS/reflex"
  export BUN_INSTALL_CACHE_DIR="${BUN_INSTALL_CACHE_DIR:-$TOOLS/bun-cache}"
  export REFLEX_CHECK_LATEST_VERSION=0
  export REFLEX_TELEMETRY_ENABLED=false
}

# localstripe (GPL) for the offline Stripe sandbox: its own virtualenv, run as a separate process.
setup_localstripe() {
  local venv="$TOOLS/localstripe-venv" stamp
  stamp="$venv/.installed-$(sha256sum "$ROOT/sandbox/localstripe-requirements.txt" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    log "installing localstripe into .tools/localstripe-venv (offline Stripe sandbox)"
    [ -x "$venv/bin/python" ] || "$(find_python)" -m venv "$venv"
    "$venv/bin/pip" install -q --no-compile --disable-pip-version-check -r "$ROOT/sandbox/localstripe-requirements.txt" 2>&1 \
      | grep -v "^WARNING: Location" >&2 || true
    "$venv/bin/python" -c 'import localstripe' || die "localstripe did not install"
    touch "$stamp"
  fi
  export LOCALSTRIPE_PYTHON="$venv/bin/python"
}

# The same in the background, alongside the app's virtualenv; setup_localstripe_wait collects it.
setup_localstripe_start() {
  (setup_localstripe) &
  LOCALSTRIPE_JOB=$!
}
setup_localstripe_wait() {
  wait "$LOCALSTRIPE_JOB" || die "localstripe did not install"
  setup_localstripe
}

setup_database() {
  "$VENV/bin/orcapulse-billing" init-db >/dev/null
  "$VENV/bin/orcapulse-billing" seed-demo
}

# development or production (ORCAPULSE_ENV=production, or an https APP_URL), printed on stdout. Production
# without real provider keys and webhook secrets prints one line on stderr and fails. Standard library only,
# so it runs before anything is installed or started.
check_mode() {
  (cd "$ROOT" && "$(find_python)" -m orcapulse_billing.config)
}

# The offline sandboxes' webhook signing secrets: random, made once per installation into
# $DATA_DIR/sandbox-secrets.env (mode 600), reused on later runs, never committed. Sets
# SANDBOX_STRIPE_WEBHOOK_SECRET and SANDBOX_LEMONSQUEEZY_WEBHOOK_SECRET (not exported).
setup_sandbox_secrets() {
  local file="$DATA_DIR/sandbox-secrets.env" python
  SANDBOX_STRIPE_WEBHOOK_SECRET="" SANDBOX_LEMONSQUEEZY_WEBHOOK_SECRET=""
  if [ -f "$file" ]; then source "$file"; fi
  if [ -z "$SANDBOX_STRIPE_WEBHOOK_SECRET" ] || [ -z "$SANDBOX_LEMONSQUEEZY_WEBHOOK_SECRET" ]; then
    log "generating this installation's sandbox webhook secrets into $file"
    python="$(find_python)"
    mkdir -p "$DATA_DIR"
    (
      umask 077
      {
        echo "# Webhook signing secrets of this installation's offline payment sandboxes (scripts/run)."
        echo "# Random per installation, never committed; delete this file to make new ones."
        echo "SANDBOX_STRIPE_WEBHOOK_SECRET=whsec_$("$python" -c 'import secrets; print(secrets.token_hex(24))')"
        echo "SANDBOX_LEMONSQUEEZY_WEBHOOK_SECRET=$("$python" -c 'import secrets; print(secrets.token_hex(32))')"
      } >"$file.tmp"
      mv "$file.tmp" "$file"
    )
    source "$file"
  fi
  chmod 600 "$file"
  [ -n "$SANDBOX_STRIPE_WEBHOOK_SECRET" ] && [ -n "$SANDBOX_LEMONSQUEEZY_WEBHOOK_SECRET" ] \
    || die "could not make the sandbox webhook secrets in $file"
}
