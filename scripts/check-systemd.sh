#!/usr/bin/env bash
# Check the systemd integration of operandod without installing anything.
#
#   scripts/check-systemd.sh [UNIT] [SYSUSERS]
#
# UNIT defaults to systemd/operandod.service, SYSUSERS to systemd/operandod.sysusers.conf
# (both relative to the repository root).
#
# What it does, all inside a throw-away root directory (--root=), so the host's
# /usr/local/bin, /etc/passwd and /etc/systemd are neither needed nor touched:
#   1. systemd-sysusers --root: creates the operandod user and its dialout/plugdev
#      memberships from SYSUSERS (and so checks that file);
#   2. installs UNIT as etc/systemd/system/operandod.service, a stand-in executable at
#      the unit's ExecStart= path (usr/local/bin/operandod), and a copy of the host's
#      system unit directory (sysinit.target, network.target, ... the unit depends on);
#   3. systemd-analyze verify --root: must exit 0 AND print nothing on stderr
#      (systemd only warns about unknown keys or bad values, with exit status 0);
#   4. systemd-analyze security --offline=yes: prints the exposure score.
#
# Output on success: one line, e.g. "operandod.service: verify OK, exposure 1.7 OK".
# Environment:
#   MAX_EXPOSURE=2.0  also fail if the exposure score is above this value
#   VERBOSE=1         print the whole security table
# Exit status: 0 good; 1 a check failed (its messages are printed on stderr);
#              77 systemd-analyze or systemd-sysusers is not installed (skip).
# Works as root or as an ordinary user; needs only the `systemd` package (Debian 12).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
unit_src="${1:-$repo_root/systemd/operandod.service}"
sysusers_src="${2:-$repo_root/systemd/operandod.sysusers.conf}"
unit_name="operandod.service"

for tool in systemd-analyze systemd-sysusers; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "check-systemd: $tool not found (install the systemd package); skipping" >&2
        exit 77
    fi
done
for f in "$unit_src" "$sysusers_src"; do
    if [[ ! -f "$f" ]]; then
        echo "check-systemd: $f: no such file" >&2
        exit 1
    fi
done

# Where the host keeps its system units (merged /usr on Debian 12: both are the same).
system_unit_dir=""
for d in /usr/lib/systemd/system /lib/systemd/system; do
    if [[ -f "$d/sysinit.target" ]]; then
        system_unit_dir="$d"
        break
    fi
done
if [[ -z "$system_unit_dir" ]]; then
    echo "check-systemd: no system unit directory with sysinit.target found; skipping" >&2
    exit 77
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/check-systemd.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd"

export SYSTEMD_LOG_LEVEL=warning SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat LC_ALL=C

# Runs "$@" and fails (exit 1) if it exits non-zero or writes anything on stderr.
run_silent() {
    local what="$1"
    shift
    local err="$work/stderr" out="$work/stdout" rc=0
    "$@" >"$out" 2>"$err" || rc=$?
    if [[ $rc -ne 0 || -s "$err" ]]; then
        echo "check-systemd: $what failed (exit status $rc):" >&2
        cat "$err" "$out" >&2
        exit 1
    fi
}

# 1. The service user, as systemd-sysusers would create it on an installed system.
mkdir -p "$root/etc"
run_silent "systemd-sysusers $(basename "$sysusers_src")" \
    systemd-sysusers --root="$root" "$sysusers_src"
if ! grep -q '^operandod:' "$root/etc/passwd"; then
    echo "check-systemd: $sysusers_src does not create the user operandod" >&2
    exit 1
fi

# 2. The unit, the units it depends on, and a stand-in for each absolute executable in
#    ExecStart*= / ExecStop*= / ExecReload= / ExecCondition= (verify checks that they
#    exist and are executable inside --root).
cp -a "$system_unit_dir" "$root/usr/lib/systemd/"
cp "$unit_src" "$root/etc/systemd/system/$unit_name"
sed -n -E 's/^[[:space:]]*Exec(Start|StartPre|StartPost|Stop|StopPost|Reload|Condition)=[-@:+!]*([^[:space:]]+).*/\2/p' \
    "$unit_src" | while read -r exe; do
    [[ "$exe" == /* ]] || continue
    mkdir -p "$root$(dirname "$exe")"
    printf '#!/bin/sh\nexit 0\n' >"$root$exe"
    chmod 0755 "$root$exe"
done

# 3. verify: silent or fail.
run_silent "systemd-analyze verify $unit_name" \
    systemd-analyze verify --root="$root" "$unit_name"

# 4. security: print the exposure score.
sec_out="$work/security"
sec_err="$work/security.err"
rc=0
systemd-analyze security --offline=yes --root="$root" "$unit_name" >"$sec_out" 2>"$sec_err" || rc=$?
if [[ $rc -ne 0 || -s "$sec_err" ]]; then
    echo "check-systemd: systemd-analyze security $unit_name failed (exit status $rc):" >&2
    cat "$sec_err" >&2
    exit 1
fi
# "→ Overall exposure level for operandod.service: 1.7 OK 🙂"
score_line="$(sed -n -E "s/.*Overall exposure level for ${unit_name//./\\.}: ([0-9]+(\.[0-9]+)?) ([A-Z]+).*/\1 \3/p" "$sec_out")"
if [[ -z "$score_line" ]]; then
    echo "check-systemd: no exposure score in the output of systemd-analyze security:" >&2
    cat "$sec_out" >&2
    exit 1
fi
read -r score verdict <<<"$score_line"

if [[ "${VERBOSE:-0}" == 1 ]]; then
    cat "$sec_out"
fi
echo "$unit_name: verify OK, exposure $score $verdict"

if [[ -n "${MAX_EXPOSURE:-}" ]]; then
    if awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s > m) }'; then
        echo "check-systemd: exposure $score is above MAX_EXPOSURE=$MAX_EXPOSURE" >&2
        exit 1
    fi
fi
