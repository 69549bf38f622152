# shellcheck shell=bash
# Shared helpers for scripts/run and scripts/test. Source this file; it does not change shell options.
#
#   pynet_log / pynet_die            messages on stderr
#   pynet_apt_install PKG...         installs only the missing packages (one apt-get update first)
#   pynet_find_python                prints a python3 (>= 3.11) that can create a venv
#   pynet_ensure_venv [EXTRAS]       <repo>/.venv with the hash-pinned lock requirements/<EXTRAS|base>.lock
#                                    (`pip install --require-hashes`), then pynet itself with --no-deps;
#                                    skipped when a stamp keyed on pyproject.toml, the locks (and the
#                                    venv path) says it is done
[[ -n "${_PYNET_COMMON_SH:-}" ]] && return 0
_PYNET_COMMON_SH=1

PYNET_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYNET_VENV="${PYNET_VENV:-$PYNET_ROOT/.venv}"
# Debian's tools first: /usr/local/bin/docker is a newer client that shadows /usr/bin/docker.
export PATH="/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"

pynet_log() { printf '[pynet %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
pynet_die() { pynet_log "ERROR: $*"; exit 1; }
pynet_is_root() { [[ "$(id -u)" -eq 0 ]]; }

# Prints the packages among "$@" that are not installed.
pynet_apt_missing() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || printf '%s\n' "$p"
    done
}

_PYNET_APT_UPDATED=""
pynet_apt_install() {
    local missing=()
    mapfile -t missing < <(pynet_apt_missing "$@")
    ((${#missing[@]})) || return 0
    pynet_is_root || pynet_die "missing Debian packages: ${missing[*]} (run as root to install them)"
    command -v apt-get >/dev/null || pynet_die "missing packages ${missing[*]} and no apt-get"
    pynet_log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z "$_PYNET_APT_UPDATED" ]]; then
        apt-get -q -o DPkg::Lock::Timeout=300 update >&2 || pynet_die "apt-get update failed"
        _PYNET_APT_UPDATED=1
    fi
    apt-get -q -y -o DPkg::Lock::Timeout=300 install --no-install-recommends "${missing[@]}" >&2 \
        || pynet_die "apt-get install ${missing[*]} failed"
}

_pynet_python_ok() {
    [[ -n "$1" && -x "$1" ]] || return 1
    "$1" -c 'import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

# Prefer Debian's /usr/bin/python3; else any python3 on PATH; install python3-venv if needed.
pynet_find_python() {
    local c
    for c in /usr/bin/python3 "$(command -v python3 || true)" "$(command -v python3.11 || true)" \
             "$(command -v python3.12 || true)" "$(command -v python3.13 || true)"; do
        if _pynet_python_ok "$c"; then printf '%s\n' "$c"; return 0; fi
    done
    pynet_apt_install python3 python3-venv
    _pynet_python_ok /usr/bin/python3 || pynet_die "no python3 >= 3.11 with venv/ensurepip found"
    printf '%s\n' /usr/bin/python3
}

_pynet_venv_ok() {
    [[ -x "$PYNET_VENV/bin/python" ]] && "$PYNET_VENV/bin/python" -c \
        'import sys; sys.exit(0 if sys.version_info >= (3, 11) and sys.prefix != sys.base_prefix else 1)' \
        >/dev/null 2>&1
}

_pynet_venv_hash() {
    { cat "$PYNET_ROOT/pyproject.toml" "$PYNET_ROOT"/requirements/*.lock 2>/dev/null
      printf 'venv=%s\n' "$PYNET_VENV"; } | sha256sum | cut -d' ' -f1
}

# True when a stamp for EXTRAS (or, for the base install, any stamp) matches pyproject.toml.
_pynet_venv_current() {
    local extras="$1" want stamp stamps
    _pynet_venv_ok && [[ -x "$PYNET_VENV/bin/pynet" ]] || return 1
    want="$(_pynet_venv_hash)"
    if [[ -n "$extras" ]]; then stamps=("$PYNET_VENV/.pynet-stamp-$extras"); else stamps=("$PYNET_VENV"/.pynet-stamp-*); fi
    for stamp in "${stamps[@]}"; do
        [[ -f "$stamp" && "$(<"$stamp")" == "$want" ]] && return 0
    done
    return 1
}

# Installs requirements/<extra>.lock and requirements/build-system.lock with --require-hashes, then
# pynet with --no-deps --no-build-isolation (so every file pip fetches is hash-checked). A lock that
# disagrees with pyproject.toml (a dependency added without `scripts/lock`) is said loudly and the
# rest comes unpinned from pyproject, so a checkout still runs; tests/deploy/test_lock.py fails then.
_pynet_install_locked() {
    local extras="$1" spec="$2" lockf py="$PYNET_VENV/bin/python"
    lockf="$PYNET_ROOT/requirements/${extras:-base}.lock"
    local pip=("$py" -m pip install -q --disable-pip-version-check)
    [[ -f "$lockf" ]] || pynet_die "no lock $lockf for extra '${extras:-base}' (scripts/lock writes it)"
    # python-iptables is an sdist with a C wrapper: a bare Debian 12 has no compiler or Python.h
    if pynet_is_root; then pynet_apt_install gcc libc6-dev python3-dev; fi
    pynet_log "pip install --require-hashes -r ${lockf#"$PYNET_ROOT"/} into $PYNET_VENV"
    "${pip[@]}" --require-hashes -r "$PYNET_ROOT/requirements/build-system.lock" -r "$lockf" >&2 \
        || pynet_die "pip install --require-hashes -r $lockf failed"
    (cd "$PYNET_ROOT" && "${pip[@]}" --no-deps --no-build-isolation -e "$spec") >&2 \
        || pynet_die "pip install --no-deps -e '$spec' failed"
    if ! "$py" "$PYNET_ROOT/scripts/lib/lockcheck.py" "$extras"; then
        pynet_log "WARNING: ${lockf#"$PYNET_ROOT"/} disagrees with pyproject.toml (above): run scripts/lock;"
        pynet_log "WARNING: installing the rest unpinned from pyproject.toml meanwhile"
        (cd "$PYNET_ROOT" && "${pip[@]}" -e "$spec") >&2 || pynet_die "pip install -e '$spec' failed"
    fi
}

pynet_ensure_venv() {
    local extras="${1:-}" spec="." lock lockfd py
    [[ -n "$extras" ]] && spec=".[$extras]"
    _pynet_venv_current "$extras" && return 0
    lock="/tmp/pynet-venv-$(printf '%s' "$PYNET_VENV" | sha256sum | cut -c1-12).lock"
    exec {lockfd}>"$lock"
    flock "$lockfd"
    if ! _pynet_venv_current "$extras"; then
        if ! _pynet_venv_ok; then
            py="$(pynet_find_python)"
            pynet_log "creating venv $PYNET_VENV with $py"
            rm -rf "$PYNET_VENV"
            "$py" -m venv "$PYNET_VENV" || pynet_die "venv creation failed"
        fi
        _pynet_install_locked "$extras" "$spec"
        _pynet_venv_hash >"$PYNET_VENV/.pynet-stamp-${extras:-base}"
    fi
    exec {lockfd}>&-
}
