# shellcheck shell=bash
# dockerd and test-image helpers, shared by scripts/test and the e2e harness (tests/e2e/harness.py).
# Source it, or run it:  bash scripts/lib/docker.sh ensure-dockerd [LOGFILE] | ensure-image | stop-dockerd
#
# Always Debian's client, /usr/bin/docker: /usr/local/bin/docker (Docker 28) shadows it on PATH.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PYNET_DOCKER="${PYNET_DOCKER:-/usr/bin/docker}"
PYNET_DOCKERD="${PYNET_DOCKERD:-/usr/sbin/dockerd}"
PYNET_TEST_IMAGE="${PYNET_TEST_IMAGE:-pynet-test:latest}"
PYNET_DOCKERD_PIDFILE="${PYNET_DOCKERD_PIDFILE:-/var/run/docker.pid}"
PYNET_DOCKERD_STARTED="${PYNET_DOCKERD_STARTED:-}"

pynet_dockerd_up() { timeout 20 "$PYNET_DOCKER" info >/dev/null 2>&1; }

_pynet_is_dockerd() { [[ -n "${1:-}" && -r "/proc/$1/comm" && "$(cat "/proc/$1/comm" 2>/dev/null)" == dockerd ]]; }

# Starts dockerd in the background (own session, log to a file) unless `docker info` answers;
# waits until it answers (PYNET_DOCKERD_TIMEOUT seconds, default 90). Sets PYNET_DOCKERD_STARTED=1.
pynet_ensure_dockerd() {
    local log="${1:-/tmp/pynet-dockerd.log}" timeout="${PYNET_DOCKERD_TIMEOUT:-90}" pid="" deadline
    pynet_dockerd_up && return 0
    pynet_is_root || pynet_die "dockerd is not answering and only root can start it"
    [[ -x "$PYNET_DOCKERD" ]] || PYNET_DOCKERD="$(command -v dockerd)" \
        || pynet_die "dockerd not found (apt-get install docker.io)"
    if [[ -f "$PYNET_DOCKERD_PIDFILE" ]]; then
        pid="$(<"$PYNET_DOCKERD_PIDFILE")"
        if _pynet_is_dockerd "$pid"; then
            pynet_log "dockerd (pid $pid) is running but not answering yet; waiting"
        else
            rm -f "$PYNET_DOCKERD_PIDFILE"   # stale, left by a killed dockerd
            pid=""
        fi
    fi
    if [[ -z "$pid" ]]; then
        # no systemd here: cgroups may need mounting by hand
        if ! mountpoint -q /sys/fs/cgroup && command -v cgroupfs-mount >/dev/null; then
            cgroupfs-mount >&2 || true
        fi
        mkdir -p "$(dirname "$log")"
        pynet_log "starting dockerd (log: $log)"
        # setsid: a Ctrl-C on the test run must not reach dockerd; no fd of ours stays open in it.
        setsid "$PYNET_DOCKERD" ${PYNET_DOCKERD_ARGS:-} </dev/null >>"$log" 2>&1 &
        pid=$!
        PYNET_DOCKERD_STARTED=1
    fi
    deadline=$((SECONDS + timeout))
    until pynet_dockerd_up; do
        if ! kill -0 "$pid" 2>/dev/null && ! _pynet_is_dockerd "$(cat "$PYNET_DOCKERD_PIDFILE" 2>/dev/null)"; then
            tail -n 40 "$log" >&2 || true
            pynet_die "dockerd exited during startup (log: $log)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 40 "$log" >&2 || true
            pynet_die "dockerd not answering after ${timeout}s (log: $log)"
        fi
        sleep 0.5
    done
    pynet_log "dockerd is up (pid $(cat "$PYNET_DOCKERD_PIDFILE" 2>/dev/null || echo "$pid"))"
}

# Stops the dockerd named by the pidfile (SIGTERM, then waits up to 30 s).
pynet_stop_dockerd() {
    local pid i
    pid="$(cat "$PYNET_DOCKERD_PIDFILE" 2>/dev/null || true)"
    _pynet_is_dockerd "$pid" || return 0
    pynet_log "stopping dockerd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    pynet_log "dockerd (pid $pid) still running after 30s"
}

# Builds $PYNET_TEST_IMAGE with `docker import` from a busybox-static root fs, unless it exists.
pynet_ensure_test_image() {
    "$PYNET_DOCKER" image inspect "$PYNET_TEST_IMAGE" >/dev/null 2>&1 && return 0
    local bb="" c
    for c in /bin/busybox /usr/bin/busybox; do [[ -x "$c" ]] && { bb="$c"; break; }; done
    [[ -n "$bb" ]] || pynet_die "busybox not found (apt-get install busybox-static)"
    if ldd "$bb" >/dev/null 2>&1; then pynet_die "$bb is dynamically linked (apt-get install busybox-static)"; fi
    pynet_log "building $PYNET_TEST_IMAGE from $bb"
    (
        set -euo pipefail
        tmp="$(mktemp -d /tmp/pynet-rootfs.XXXXXX)"
        trap 'rm -rf "$tmp"' EXIT
        root="$tmp/rootfs"
        mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,root,run,var/www,usr}
        chmod 1777 "$root/tmp"
        ln -s bin "$root/sbin"
        ln -s ../bin "$root/usr/bin"
        ln -s ../bin "$root/usr/sbin"
        cp "$bb" "$root/bin/busybox"
        for applet in $("$bb" --list); do
            [[ "$applet" == busybox || -e "$root/bin/$applet" ]] || ln -s busybox "$root/bin/$applet"
        done
        printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
        printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
        printf 'pynet test image\n' >"$root/var/www/index.html"
        tar --numeric-owner -C "$root" -cf - . | "$PYNET_DOCKER" import \
            -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' \
            -m "pynet test image (busybox-static)" - "$PYNET_TEST_IMAGE" >/dev/null
    ) || pynet_die "building $PYNET_TEST_IMAGE failed"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    cmd="${1:-}"; shift || true
    case "$cmd" in
        ensure-dockerd) pynet_ensure_dockerd "$@" ;;
        ensure-image)   pynet_ensure_test_image ;;
        stop-dockerd)   pynet_stop_dockerd ;;
        *) echo "usage: $0 ensure-dockerd [LOGFILE] | ensure-image | stop-dockerd" >&2; exit 2 ;;
    esac
fi
