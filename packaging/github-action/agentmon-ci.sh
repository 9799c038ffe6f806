#!/usr/bin/env bash
# agentmon CI runner step (used by action.yml; also runs outside GitHub).
#
# Installs the agentmon .deb ($AGENTMON_PACKAGE: a path or an http(s) URL),
# starts the daemon (systemd if it runs, else in the background), runs
# $AGENTMON_RUN with bash -c inside a session with policy $AGENTMON_POLICY,
# then prints `agentmon summary` to the log and to $GITHUB_STEP_SUMMARY and
# writes it as JSON to $AGENTMON_SUMMARY_JSON. Exit status: the command's,
# or 3 when $AGENTMON_FAIL_ON_DENY is true and something was denied (the
# command's failure wins), or 125 when agentmon itself failed.
set -euo pipefail

: "${AGENTMON_PACKAGE:?set AGENTMON_PACKAGE to the .deb path or URL}"
: "${AGENTMON_RUN:?set AGENTMON_RUN to the command to run}"
policy=${AGENTMON_POLICY:-default}
json_out=${AGENTMON_SUMMARY_JSON:-agentmon-summary.json}
fail_on_deny=${AGENTMON_FAIL_ON_DENY:-false}
socket=/run/agentmon/agentmon.sock

say() { echo "agentmon-ci: $*" >&2; }
die() { say "$*"; exit 125; }

# Root for installing and for the daemon; the command itself runs as the
# calling user (GitHub's runner user has passwordless sudo).
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
else
    command -v sudo >/dev/null || die "not root and no sudo"
    sudo=(sudo)
fi

# 1. Install.
deb=$AGENTMON_PACKAGE
case "$deb" in
    http://*|https://*)
        tmp=$(mktemp -d)
        deb="$tmp/agentmon.deb"
        say "downloading $AGENTMON_PACKAGE"
        curl -fsSL --retry 3 -o "$deb" "$AGENTMON_PACKAGE" || die "download failed"
        ;;
esac
[ -f "$deb" ] || die "no package at $deb"
say "installing $deb"
"${sudo[@]}" dpkg -i "$deb" >&2 || die "dpkg -i $deb failed"

# 2. Start the daemon. Sessions may be created by root or daemon.group: a
# non-root caller gets a drop-in that names its primary group.
started_here=""
group=$(id -gn)
daemon_args=()
if [ "$(id -u)" -ne 0 ]; then
    daemon_args=(--group "$group")
fi
# Extra daemon arguments ($AGENTMON_DAEMON_ARGS, split on white space).
read -r -a extra <<<"${AGENTMON_DAEMON_ARGS:-}"
daemon_args+=("${extra[@]}")
if [ -d /run/systemd/system ]; then
    if [ ${#daemon_args[@]} -gt 0 ]; then
        "${sudo[@]}" mkdir -p /etc/systemd/system/agentmon.service.d
        printf '[Service]\nExecStart=\nExecStart=/usr/bin/agentmon daemon --config /etc/agentmon/agentmon.toml %s\n' "${daemon_args[*]}" |
            "${sudo[@]}" tee /etc/systemd/system/agentmon.service.d/ci.conf >/dev/null
        "${sudo[@]}" systemctl daemon-reload
    fi
    "${sudo[@]}" systemctl restart agentmon.service || {
        "${sudo[@]}" journalctl -u agentmon.service --no-pager -n 50 >&2 || true
        die "the agentmon service did not start"
    }
else
    log=$(mktemp /tmp/agentmon-daemon.XXXXXX.log)
    say "no running systemd: starting the daemon in the background (log: $log)"
    "${sudo[@]}" /usr/bin/agentmon daemon --config /etc/agentmon/agentmon.toml "${daemon_args[@]}" >"$log" 2>&1 &
    started_here=$!
fi
for _ in $(seq 1 300); do
    [ -S "$socket" ] && agentmon status >/dev/null 2>&1 && break
    if [ -n "$started_here" ] && ! kill -0 "$started_here" 2>/dev/null; then
        cat "$log" >&2 || true
        die "the daemon exited at start"
    fi
    sleep 0.1
done
agentmon status >/dev/null 2>&1 || die "the daemon does not answer on $socket"

stop_daemon() {
    if [ -n "$started_here" ]; then
        "${sudo[@]}" kill -TERM "$started_here" 2>/dev/null || true
        wait "$started_here" 2>/dev/null || true
    fi
}
trap stop_daemon EXIT

# 3. Run the command in a session.
session="ci-$(tr -d '-' </proc/sys/kernel/random/uuid | cut -c1-16)"
say "session $session, policy $policy"
set +e
agentmon run --quiet --session "$session" --policy "$policy" --workspace "$PWD" -- bash -c "$AGENTMON_RUN"
code=$?
set -e
say "command exited with $code"

# 4. Summary: wait for the daemon to record the session's end.
summary=(agentmon summary --session "$session" --wait 15s)
"${sudo[@]}" "${summary[@]}" >&2 || die "agentmon summary failed"
"${sudo[@]}" "${summary[@]}" --json >"$json_out" || die "agentmon summary --json failed"
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    "${sudo[@]}" "${summary[@]}" --markdown >>"$GITHUB_STEP_SUMMARY" || true
fi
set +e
"${sudo[@]}" "${summary[@]}" --fail-on-deny >/dev/null 2>&1
deny_status=$?
set -e
denied=0
[ "$deny_status" -eq 3 ] && denied=1
denied_count=$(sed -n 's/^  "denied": \([0-9]*\),$/\1/p' "$json_out")
if [ -n "${GITHUB_OUTPUT:-}" ]; then
    {
        echo "session=$session"
        echo "exit-code=$code"
        echo "denied=${denied_count:-0}"
    } >>"$GITHUB_OUTPUT"
fi

if [ "$code" -ne 0 ]; then
    exit "$code"
fi
if [ "$fail_on_deny" = "true" ] && [ "$denied" -eq 1 ]; then
    say "failing: ${denied_count:-some} event(s) were denied (fail-on-deny)"
    exit 3
fi
exit 0
