#!/usr/bin/env bash
# ls_harness.sh - run a real Label Studio (1.23.2 by default) locally to try the backend against: SQLite, bound to
# 127.0.0.1 only, a known admin login and legacy API token, no outbound calls.
#
#   scripts/ls_harness.sh start [--fresh]  start LS (installs its venv on first use), print export lines; --fresh
#                                          starts from an empty copy of the migrated template (no projects)
#   scripts/ls_harness.sh stop             stop the server started here (by its recorded PID and process group)
#   scripts/ls_harness.sh status           is it up? which PID? does the token work?
#   scripts/ls_harness.sh env              print export lines: LS_URL, LS_TOKEN (and LABEL_STUDIO_URL/_API_KEY)
#   scripts/ls_harness.sh pat              print the admin's personal access token (minted once per data dir)
#   scripts/ls_harness.sh logs [N]         the last N lines of LS's log [40]
#
# Typical use:
#   eval "$(scripts/ls_harness.sh start --fresh)"     # LS_URL=http://127.0.0.1:8080, LS_TOKEN=<40 hex chars>
#   ml-backend serve --host 127.0.0.1 --port 9090 &   # LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY come from the exports
#   open $LS_URL, log in as admin@example.com / admin12345, create a project, Settings > Model > Connect Model:
#   http://127.0.0.1:9090
#   scripts/ls_harness.sh stop
#
# Environment (defaults in brackets):
#   LS_CACHE_DIR  everything lives here [${XDG_CACHE_HOME:-~/.cache}/al-backend-ls]; the Python test helper
#                 (tests/lsserver.py) uses the same dir, venv and template, so either one installs for both
#   LS_VENV       venv holding label-studio [$LS_CACHE_DIR/ls-venv]; created with `pip install label-studio==$LS_VERSION`
#   LS_VERSION    [1.23.2]
#   LS_PORT       HTTP port on 127.0.0.1 [8080]
#   LS_DATA       LS data dir (SQLite, uploads) [$LS_CACHE_DIR/harness-$LS_PORT/data]; kept between starts unless --fresh
#   LS_USER / LS_PASS / LS_TOKEN  admin login and legacy token [admin@example.com / admin12345 / 0123...4567]
#   SECRET_KEY    Django secret, fixed so that PATs stay valid across restarts [the test helper's value]
# Files in $LS_CACHE_DIR/harness-$LS_PORT/: ls.pid, ls.log, cookies, pat, home/. Needs python3 and curl, and
# package-index access for the first install (~90 s, ~1 GB) and the template (~60 s of migrations, once).
#
# Label Studio 1.23 facts this relies on:
#  * LABEL_STUDIO_USERNAME/PASSWORD/USER_TOKEN create the admin and its legacy token without a prompt (only when the
#    user does not exist yet); `label-studio init ... --enable-legacy-api-token --quiet` migrates and exits.
#  * Legacy "Token" auth is off by default for new organisations (401 "legacy token authentication has been
#    disabled"); LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true at org creation turns it on, `start` repairs it through
#    POST /api/jwt/settings otherwise.
#  * ML backend and webhook URLs on 127.0.0.1 are refused by default (403 "URL resolves to a reserved network
#    address"): ML_BLOCK_LOCAL_IP=false and SSRF_PROTECTION_ENABLED=false lift that.
#  * LATEST_VERSION_CHECK=false, empty SENTRY_DSN/FRONTEND_SENTRY_DSN and COLLECT_ANALYTICS=false stop LS's own
#    outbound calls; a dead loopback proxy catches any other (NO_PROXY covers 127.0.0.1 and localhost only).
#  * A personal access token (PAT) is a JWT refresh token signed with SECRET_KEY; LS allows one valid PAT per user
#    (POST /api/token/ answers 409 for a second), so `pat` stores the one it minted.
set -euo pipefail

LS_VERSION=${LS_VERSION:-1.23.2}
LS_CACHE_DIR=${LS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/al-backend-ls}
LS_VENV=${LS_VENV:-$LS_CACHE_DIR/ls-venv}
LS_PORT=${LS_PORT:-8080}
RUN_DIR="$LS_CACHE_DIR/harness-$LS_PORT"
LS_DATA=${LS_DATA:-$RUN_DIR/data}
LS_USER=${LS_USER:-admin@example.com}
LS_PASS=${LS_PASS:-admin12345}
LS_TOKEN=${LS_TOKEN:-0123456789abcdef0123456789abcdef01234567}
SECRET_KEY=${SECRET_KEY:-al-backend-tests-secret-key-not-for-production}
LS_URL="http://127.0.0.1:$LS_PORT"
PIDFILE="$RUN_DIR/ls.pid"
LOGFILE="$RUN_DIR/ls.log"
COOKIES="$RUN_DIR/cookies"
PATFILE="$RUN_DIR/pat"

CURL=(curl -s --noproxy '*' --max-time 30)

say() { echo "[ls_harness] $*" >&2; }

# Same name as tests/lsserver.py's template dir, so that both share one migrated template.
template_dir() {
  local key
  key=$(python3 -c 'import hashlib, json, sys; print(hashlib.sha256(json.dumps(sys.argv[1:]).encode()).hexdigest()[:10])' \
        "$LS_VERSION" "$LS_USER" "$LS_PASS" "$LS_TOKEN" "$SECRET_KEY")
  echo "$LS_CACHE_DIR/data-template-$LS_VERSION-$key"
}

ls_env() {  # $1 = data dir; keeps every file under $LS_CACHE_DIR and every request on loopback
  export HOME="$RUN_DIR/home"
  export LABEL_STUDIO_BASE_DATA_DIR="$1" DJANGO_DB=sqlite
  export LATEST_VERSION_CHECK=false SENTRY_DSN= FRONTEND_SENTRY_DSN= COLLECT_ANALYTICS=false
  export HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9
  export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
  export LABEL_STUDIO_USERNAME="$LS_USER" LABEL_STUDIO_PASSWORD="$LS_PASS" LABEL_STUDIO_USER_TOKEN="$LS_TOKEN"
  export LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true ML_BLOCK_LOCAL_IP=false SSRF_PROTECTION_ENABLED=false
  export SECRET_KEY PYTHONUNBUFFERED=1
  unset PYTHONPATH PYTHONHOME VIRTUAL_ENV DJANGO_SETTINGS_MODULE LABEL_STUDIO_HOST || true
  mkdir -p "$HOME"
}

with_lock() {  # $1 = lock name; serialises installs/builds with the Python helper when flock exists
  local lock="$LS_CACHE_DIR/.$1.lock"; shift
  if command -v flock >/dev/null 2>&1; then
    ( flock 9; "$@" ) 9>"$lock"
  else
    "$@"
  fi
}

installed() { compgen -G "$LS_VENV/lib/python*/site-packages/label_studio-$LS_VERSION.dist-info" >/dev/null; }

do_install() {
  installed && return 0
  say "installing label-studio==$LS_VERSION into $LS_VENV (~90 s, ~1 GB)"
  [ -x "$LS_VENV/bin/python" ] || python3 -m venv "$LS_VENV"
  "$LS_VENV/bin/python" -m pip install --disable-pip-version-check "label-studio==$LS_VERSION" \
      >"$LS_CACHE_DIR/pip-install.log" 2>&1 || { say "pip install failed:"; tail -20 "$LS_CACHE_DIR/pip-install.log" >&2; exit 1; }
}

do_template() {
  local tpl; tpl=$(template_dir)
  [ -f "$tpl/TEMPLATE_OK" ] && return 0
  say "building the migrated template $tpl (~60 s, once)"
  local tmp; tmp=$(mktemp -d "$LS_CACHE_DIR/tpl-build-XXXXXX")
  mkdir -p "$tmp/data"
  if ! ( ls_env "$tmp/data"; export HOME="$tmp/home"; mkdir -p "$HOME"
         "$LS_VENV/bin/label-studio" init --username "$LS_USER" --password "$LS_PASS" --user-token "$LS_TOKEN" \
           --enable-legacy-api-token --quiet --no-browser </dev/null ) >"$LS_CACHE_DIR/ls-template-init.log" 2>&1 \
     || [ ! -f "$tmp/data/label_studio.sqlite3" ]; then
    say "label-studio init failed:"; tail -30 "$LS_CACHE_DIR/ls-template-init.log" >&2; rm -rf "$tmp"; exit 1
  fi
  echo "{\"version\": \"$LS_VERSION\", \"user\": \"$LS_USER\"}" >"$tmp/data/TEMPLATE_OK"
  rm -rf "$tpl"; mv "$tmp/data" "$tpl"; rm -rf "$tmp"
}

is_running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

login_session() {
  rm -f "$COOKIES"
  "${CURL[@]}" -c "$COOKIES" -b "$COOKIES" "$LS_URL/user/login/" -o /dev/null
  "${CURL[@]}" -c "$COOKIES" -b "$COOKIES" -X POST -H "Referer: $LS_URL/user/login/" \
    --data-urlencode "email=$LS_USER" --data-urlencode "password=$LS_PASS" \
    --data-urlencode "csrfmiddlewaretoken=$(csrf)" "$LS_URL/user/login/" -o /dev/null
  grep -q sessionid "$COOKIES" || { say "login as $LS_USER failed"; exit 1; }
}

csrf() { awk '$6=="csrftoken"{print $7}' "$COOKIES"; }

whoami_ok() { "${CURL[@]}" -H "Authorization: Token $LS_TOKEN" "$LS_URL/api/current-user/whoami" | grep -q '"email"'; }

ensure_token() {
  whoami_ok && return 0
  local r; r=$("${CURL[@]}" -H "Authorization: Token $LS_TOKEN" "$LS_URL/api/current-user/whoami")
  say "token check failed: $r"
  login_session
  if echo "$r" | grep -q 'legacy token authentication has been disabled'; then
    "${CURL[@]}" -b "$COOKIES" -X POST -H "X-CSRFToken: $(csrf)" -H "Referer: $LS_URL/" -H 'Content-Type: application/json' \
      -d '{"legacy_api_tokens_enabled": true, "api_tokens_enabled": true}' "$LS_URL/api/jwt/settings" >/dev/null
  else  # the admin existed with another token (an old data dir): use the stored one
    LS_TOKEN=$("${CURL[@]}" -b "$COOKIES" "$LS_URL/api/current-user/token" | python3 -c 'import sys, json; print(json.load(sys.stdin)["token"])')
    say "using the stored token of $LS_USER instead"
  fi
  whoami_ok || { say "the token is still rejected"; exit 1; }
}

cmd_start() {
  local fresh=0; [ "${1:-}" = "--fresh" ] && fresh=1
  mkdir -p "$LS_CACHE_DIR" "$RUN_DIR"
  if is_running; then say "already running, PID $(cat "$PIDFILE")"; cmd_env; return 0; fi
  with_lock install do_install
  if [ $fresh = 1 ] || [ ! -f "$LS_DATA/label_studio.sqlite3" ]; then
    with_lock template do_template
    rm -rf "$LS_DATA" "$PATFILE"; cp -a "$(template_dir)" "$LS_DATA"
  fi
  if "${CURL[@]}" --max-time 2 -o /dev/null "$LS_URL/health"; then say "port $LS_PORT is taken by something else"; exit 1; fi
  local t0; t0=$(date +%s)
  # own session and process group (the PID is the group leader), so that `stop` ends LS and nothing else
  ( ls_env "$LS_DATA"
    exec "$LS_VENV/bin/python" -c 'import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])' \
      "$LS_VENV/bin/label-studio" start --no-browser --internal-host 127.0.0.1 --port "$LS_PORT" ) \
      >"$LOGFILE" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local ok=0
  for _ in $(seq 1 720); do
    if "${CURL[@]}" --max-time 2 "$LS_URL/health" 2>/dev/null | grep -q UP; then ok=1; break; fi
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break
    sleep 0.25
  done
  if [ $ok = 0 ]; then say "Label Studio did not come up; tail of $LOGFILE:"; tail -30 "$LOGFILE" >&2; cmd_stop; exit 1; fi
  ensure_token
  say "Label Studio $LS_VERSION up at $LS_URL in $(( $(date +%s) - t0 )) s, PID $(cat "$PIDFILE"), log $LOGFILE"
  say "log in as $LS_USER / $LS_PASS"
  cmd_env
}

cmd_stop() {
  if ! [ -f "$PIDFILE" ]; then say "not running (no $PIDFILE)"; return 0; fi
  local pid; pid=$(cat "$PIDFILE")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"; fi
    say "stopped PID $pid"
  else
    say "PID $pid was not running"
  fi
  rm -f "$PIDFILE"
}

cmd_env() {
  echo "export LS_URL=$LS_URL"
  echo "export LS_TOKEN=$LS_TOKEN"
  echo "export LABEL_STUDIO_URL=$LS_URL"
  echo "export LABEL_STUDIO_API_KEY=$LS_TOKEN"
}

cmd_status() {
  if is_running; then
    echo "running: PID $(cat "$PIDFILE") at $LS_URL, data $LS_DATA, log $LOGFILE"
    echo "health: $("${CURL[@]}" "$LS_URL/health")"
    if whoami_ok; then echo "token: OK ($LS_TOKEN)"; else echo "token: REJECTED"; fi
  else
    echo "not running (port $LS_PORT)"
    return 1
  fi
}

cmd_pat() {
  is_running || { say "not running"; exit 1; }
  if [ -s "$PATFILE" ] && "${CURL[@]}" -X POST -H 'Content-Type: application/json' \
       -d "{\"refresh\": \"$(cat "$PATFILE")\"}" "$LS_URL/api/token/refresh/" | grep -q '"access"'; then
    cat "$PATFILE"; return 0
  fi
  login_session
  local r; r=$("${CURL[@]}" -b "$COOKIES" -X POST -H "X-CSRFToken: $(csrf)" -H "Referer: $LS_URL/" "$LS_URL/api/token/")
  local pat; pat=$(echo "$r" | python3 -c 'import sys, json; print(json.load(sys.stdin).get("token", ""))' 2>/dev/null || true)
  if [ -z "$pat" ]; then
    say "POST /api/token/ answered: $r"
    say "(LS allows one PAT per user: revoke the old one under Account & Settings, or restart with --fresh)"
    exit 1
  fi
  umask 077; echo "$pat" >"$PATFILE"; echo "$pat"
}

cmd_logs() { tail -n "${1:-40}" "$LOGFILE"; }

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  pat) cmd_pat ;;
  logs) shift; cmd_logs "$@" ;;
  *) sed -n '2,21p' "$0"; exit 2 ;;
esac
