#!/usr/bin/env bash
# workerrmq: set up what the gateway needs, then run it or its test suite.
#
#   ./run.sh              set up, then run the gateway (release build)
#   ./run.sh test [ARGS]  set up, then cargo fmt --check, clippy, and the tests
#                         (ARGS go to cargo nextest run / cargo test)
#   ./run.sh --help
#
# Set-up is idempotent and prints one `==>` line per step:
#   rabbitmq                  running on AMQP_URL's host (started, or installed
#                             with apt-get when missing and root)
#   rabbitmq management plugin enabled, and its API answers
#   mongodb                   something answers at MONGODB_URI, else SecantusDB
#                             (PyPI `secantusdb`, project-local .venv) is started
#   schemathesis              (test only) the pinned API fuzzer in .venv
#   standardwebhooks          (test only) the Standard Webhooks reference library in .venv
#   chromium                  (test only) Chromium and chromedriver for the
#                             console's browser tests (apt-get when missing)
#   rabbitmq cluster          (test only) the three-node test cluster of
#                             scripts/rabbitmq-cluster.sh, started in the
#                             background while the build runs, waited for
#                             before the tests, stopped at the end (only when
#                             this run started it)
#   .env                      has an ADMIN_PASSWORD (generated once, printed once)
#                             and a SECRETS_KEY (generated once, never printed)
#
# Settings come from the environment, then .env, then the defaults of
# DESIGN.md; secrets in them are never printed.

set -euo pipefail

cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")"

usage() {
    cat <<'EOF'
usage: ./run.sh [test [ARGS...]] | --help

  ./run.sh             make sure RabbitMQ (with the management plugin), MongoDB
                       (SecantusDB when nothing answers at MONGODB_URI) and
                       .env's ADMIN_PASSWORD and SECRETS_KEY are there, then run the gateway
                       (cargo run --release; listens on BIND_ADDR,
                       default 127.0.0.1:8080)
  ./run.sh test [ARGS] the same set-up, then cargo fmt --all -- --check,
                       cargo clippy --workspace --all-targets -- -D warnings,
                       and cargo nextest run --workspace --no-fail-fast ARGS
                       (cargo test --workspace ARGS without cargo-nextest),
                       among them a schemathesis run over /openapi.json
                       (installed into .venv, pinned); a SecantusDB started
                       for the tests is stopped at the end
  ./run.sh --help      this text

Settings are read from the environment, then .env (see .env.example).
EOF
}

MODE=run
case "${1-}" in
    "") ;;
    -h | --help | help)
        usage
        exit 0
        ;;
    test)
        MODE=test
        shift
        ;;
    *)
        printf 'run.sh: unknown argument `%s`\n\n' "$1" >&2
        usage >&2
        exit 2
        ;;
esac

# Debian's rabbitmq-server drops to the rabbitmq user through `su`, whose PAM
# session resets the open-files limit to 1,024; a broker with thousands of
# queues or connections runs out of descriptors (emfile) and falls over. As
# root, drop to rabbitmq without PAM so the raised limit is inherited.
start_system_rabbitmq() {
    if [[ $(id -u) -eq 0 ]] && id -u rabbitmq >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1; then
        (
            ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
            cd /var/lib/rabbitmq &&
                setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
                    env HOME=/var/lib/rabbitmq rabbitmq-server -detached
        )
    else
        rabbitmq-server -detached
    fi
}

step() { printf '==> %s\n' "$*"; }
warn() { printf '==> warning: %s\n' "$*" >&2; }
die() {
    printf '==> error: %s\n' "$*" >&2
    exit 1
}

mkdir -p .data

# ---------------------------------------------------------------- settings --

# The last `KEY=value` of .env (optionally `export KEY=value`, quoted or not).
dotenv_get() {
    local key=$1 line value found=1
    [[ -f .env ]] || return 1
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%$'\r'}
        [[ $line =~ ^[[:space:]]*(export[[:space:]]+)?${key}[[:space:]]*=(.*)$ ]] || continue
        value=${BASH_REMATCH[2]}
        value=${value#"${value%%[![:space:]]*}"}
        if [[ ${#value} -ge 2 && $value == \"*\" ]]; then
            value=${value:1:${#value}-2}
        elif [[ ${#value} -ge 2 && $value == \'*\' ]]; then
            value=${value:1:${#value}-2}
        else
            value=${value%%[[:space:]]#*}
            value=${value%"${value##*[![:space:]]}"}
        fi
        found=0
    done <.env
    [[ $found -eq 0 ]] && printf '%s' "$value"
    return $found
}

# Like the gateway (dotenvy, then Settings): the environment wins over .env,
# an empty value means the default.
setting() {
    local key=$1 default=$2 value=""
    if [[ -n ${!key+set} ]]; then
        value=${!key}
    else
        value=$(dotenv_get "$key") || value=""
    fi
    printf '%s' "${value:-$default}"
}

# Sets HOST and PORT from a URL's first host (userinfo, path, query dropped).
parse_host_port() {
    local url=$1 default_port=$2 rest
    rest=${url#*://}
    rest=${rest##*@}
    rest=${rest%%[/?]*}
    rest=${rest%%,*}
    if [[ $rest == \[* ]]; then
        HOST=${rest%%]*}
        HOST=${HOST#[}
        PORT=${rest#*]}
        PORT=${PORT#:}
    else
        HOST=${rest%%:*}
        PORT=${rest#"$HOST"}
        PORT=${PORT#:}
    fi
    PORT=${PORT:-$default_port}
}

is_local() {
    case "$1" in
        localhost | 127.* | ::1) return 0 ;;
        *) return 1 ;;
    esac
}

port_open() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

url_decode() {
    local s=${1//+/ }
    printf '%b' "${s//%/\\x}"
}

# HTTP status of a GET with basic auth; the credentials go to curl on stdin,
# not on its command line.
http_status() {
    local url=$1 user=$2 password=$3 cred
    if command -v curl >/dev/null 2>&1; then
        cred="$user:$password"
        cred=${cred//\\/\\\\}
        cred=${cred//\"/\\\"}
        curl -s -o /dev/null -w '%{http_code}' --max-time 5 -K - "$url" \
            <<<"user = \"$cred\"" || printf '000'
    else
        WRMQ_USER=$user WRMQ_PASSWORD=$password python3 - "$url" <<'EOF' || printf '000'
import base64, os, sys, urllib.error, urllib.request
token = base64.b64encode(f"{os.environ['WRMQ_USER']}:{os.environ['WRMQ_PASSWORD']}".encode()).decode()
request = urllib.request.Request(sys.argv[1], headers={"Authorization": f"Basic {token}"})
try:
    print(urllib.request.urlopen(request, timeout=5).status, end="")
except urllib.error.HTTPError as e:
    print(e.code, end="")
except Exception:
    print("000", end="")
EOF
    fi
}

AMQP_URL_VALUE=$(setting AMQP_URL 'amqp://guest:guest@127.0.0.1:5672/%2f')
MANAGEMENT_URL_VALUE=$(setting RABBITMQ_MANAGEMENT_URL 'http://127.0.0.1:15672')
MONGODB_URI_VALUE=$(setting MONGODB_URI 'mongodb://127.0.0.1:27017')

# ------------------------------------------------------ rabbitmq test cluster --

# The cluster tests (tests/api/cluster.rs) need the three-node cluster of
# scripts/rabbitmq-cluster.sh. It takes tens of seconds to start, so a test
# run starts it first, in the background, and waits for it only before the
# tests; a cluster that was already running is left running.
CLUSTER_PID="" CLUSTER_STARTED="" CLUSTER_LOG=.data/rabbitmq-cluster-start.log

cluster_running() {
    [[ $(scripts/rabbitmq-cluster.sh status 2>/dev/null | grep -c 'running, clustered, AMQP answers') -eq 3 ]]
}

stop_started_cluster() {
    [[ -n $CLUSTER_STARTED ]] || return 0
    CLUSTER_STARTED=""
    if [[ -n $CLUSTER_PID ]] && kill -0 "$CLUSTER_PID" 2>/dev/null; then
        wait "$CLUSTER_PID" 2>/dev/null || true
    fi
    scripts/rabbitmq-cluster.sh stop >>"$CLUSTER_LOG" 2>&1 || true
    step "rabbitmq cluster: stopped the test cluster started for this run"
}

# Every exit of a test run stops what the run started (the cluster, a
# SecantusDB); each is a no-op when this run did not start it.
on_exit() {
    stop_started_cluster
    if [[ -n ${STARTED_MONGO_PID-} ]]; then
        stop_started_mongo
    fi
}

if [[ $MODE == test ]]; then
    if cluster_running; then
        step "rabbitmq cluster: running (wrmq1..3@localhost, AMQP 5691-5693; left running)"
    elif [[ $(id -un) != root && $(id -un) != rabbitmq ]] || ! command -v rabbitmq-server >/dev/null 2>&1; then
        warn "rabbitmq cluster: cannot start it here (needs rabbitmq-server, run as root or rabbitmq); the cluster tests will fail"
    else
        mkdir -p .data
        scripts/rabbitmq-cluster.sh start >"$CLUSTER_LOG" 2>&1 &
        CLUSTER_PID=$! CLUSTER_STARTED=1
        trap on_exit EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        step "rabbitmq cluster: starting in the background (log $CLUSTER_LOG)"
    fi
fi

# ------------------------------------------------------------------ rabbitmq --

if [[ $AMQP_URL_VALUE == amqps://* ]]; then
    parse_host_port "$AMQP_URL_VALUE" 5671
else
    parse_host_port "$AMQP_URL_VALUE" 5672
fi
AMQP_HOST=$HOST AMQP_PORT=$PORT

if ! is_local "$AMQP_HOST"; then
    if port_open "$AMQP_HOST" "$AMQP_PORT"; then
        step "rabbitmq: answering at $AMQP_HOST:$AMQP_PORT (remote, not managed by run.sh)"
    else
        warn "rabbitmq: nothing answers at $AMQP_HOST:$AMQP_PORT (remote, not managed by run.sh)"
    fi
elif port_open "$AMQP_HOST" "$AMQP_PORT"; then
    step "rabbitmq: running ($AMQP_HOST:$AMQP_PORT)"
else
    did=""
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        [[ $(id -u) -eq 0 ]] ||
            die "rabbitmq: not installed; install it (sudo apt-get install -y rabbitmq-server) and re-run"
        {
            apt-get update -q &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
        } >.data/apt-rabbitmq.log 2>&1 ||
            die "rabbitmq: apt-get install rabbitmq-server failed; see .data/apt-rabbitmq.log"
        did="installed with apt-get, "
    fi
    if ! port_open "$AMQP_HOST" "$AMQP_PORT"; then
        start_system_rabbitmq >.data/rabbitmq-start.log 2>&1 ||
            die "rabbitmq: rabbitmq-server -detached failed; see .data/rabbitmq-start.log"
    fi
    deadline=$((SECONDS + 60))
    until port_open "$AMQP_HOST" "$AMQP_PORT"; do
        ((SECONDS < deadline)) ||
            die "rabbitmq: started, but nothing answers at $AMQP_HOST:$AMQP_PORT after 60 s; see /var/log/rabbitmq/"
        sleep 1
    done
    step "rabbitmq: ${did}started ($AMQP_HOST:$AMQP_PORT)"
fi

# --------------------------------------------------- rabbitmq management API --

amqp_userinfo=${AMQP_URL_VALUE#*://}
amqp_userinfo=${amqp_userinfo%%[/?]*}
if [[ $amqp_userinfo == *@* ]]; then
    amqp_userinfo=${amqp_userinfo%@*}
    amqp_user=$(url_decode "${amqp_userinfo%%:*}")
    if [[ $amqp_userinfo == *:* ]]; then
        amqp_password=$(url_decode "${amqp_userinfo#*:}")
    else
        amqp_password=""
    fi
else
    amqp_user=guest amqp_password=guest
fi
management_user=$(setting RABBITMQ_MANAGEMENT_USER "$amqp_user")
management_password=$(setting RABBITMQ_MANAGEMENT_PASSWORD "$amqp_password")
overview_url="${MANAGEMENT_URL_VALUE%/}/api/overview"
parse_host_port "$MANAGEMENT_URL_VALUE" 15672
MANAGEMENT_HOST=$HOST

status=$(http_status "$overview_url" "$management_user" "$management_password")
if [[ $status == 200 ]]; then
    step "rabbitmq management plugin: enabled (API answers at ${MANAGEMENT_URL_VALUE%/})"
elif [[ $status == 401 ]]; then
    die "rabbitmq management API at ${MANAGEMENT_URL_VALUE%/} refused the credentials (RABBITMQ_MANAGEMENT_USER/_PASSWORD, else AMQP_URL's)"
elif ! is_local "$MANAGEMENT_HOST"; then
    warn "rabbitmq management plugin: the API at ${MANAGEMENT_URL_VALUE%/} answers $status (remote, not managed by run.sh)"
else
    rabbitmq-plugins enable rabbitmq_management >.data/rabbitmq-plugins.log 2>&1 ||
        die "rabbitmq management plugin: rabbitmq-plugins enable failed; see .data/rabbitmq-plugins.log"
    deadline=$((SECONDS + 60))
    until [[ $(http_status "$overview_url" "$management_user" "$management_password") == 200 ]]; do
        ((SECONDS < deadline)) ||
            die "rabbitmq management plugin: enabled, but $overview_url did not answer 200 within 60 s"
        sleep 1
    done
    step "rabbitmq management plugin: enabled now (API answers at ${MANAGEMENT_URL_VALUE%/})"
fi

# ------------------------------------------------------------------- mongodb --

STARTED_MONGO_PID=""

stop_started_mongo() {
    [[ -n $STARTED_MONGO_PID ]] || return 0
    if kill -0 "$STARTED_MONGO_PID" 2>/dev/null; then
        kill "$STARTED_MONGO_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$STARTED_MONGO_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -0 "$STARTED_MONGO_PID" 2>/dev/null && kill -9 "$STARTED_MONGO_PID" 2>/dev/null
        step "mongodb: stopped the SecantusDB started for the tests (pid $STARTED_MONGO_PID)"
    fi
    rm -f "$MONGO_PIDFILE"
    STARTED_MONGO_PID=""
}

# Makes sure the project-local .venv exists; says what it did in VENV_HOW.
VENV_HOW=""
ensure_venv() {
    if [[ -x .venv/bin/python ]]; then
        VENV_HOW=""
        return
    fi
    command -v python3 >/dev/null 2>&1 || die "venv: needs python3 (3.10+) to create .venv"
    if ! python3 -m venv .venv >.data/venv.log 2>&1; then
        [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 ||
            die "venv: python3 -m venv failed (see .data/venv.log); install python3-venv"
        {
            apt-get update -q &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
        } >>.data/venv.log 2>&1 || die "venv: apt-get install python3-venv failed; see .data/venv.log"
        rm -rf .venv
        python3 -m venv .venv >>.data/venv.log 2>&1 || die "venv: python3 -m venv failed; see .data/venv.log"
    fi
    VENV_HOW="created .venv, "
}

# Makes sure .venv has SecantusDB; prints one line, the first time only.
SECANTUS_READY=""
ensure_secantus() {
    [[ -n $SECANTUS_READY ]] && return
    SECANTUS_READY=1
    if [[ -x .venv/bin/python ]] && .venv/bin/python -c 'import secantus' 2>/dev/null; then
        step "secantusdb: present in .venv ($(secantus_version))"
        return
    fi
    ensure_venv
    .venv/bin/pip install -q --pre secantusdb >.data/pip.log 2>&1 ||
        die "secantusdb: pip install secantusdb failed; see .data/pip.log"
    step "secantusdb: ${VENV_HOW}installed $(secantus_version) into .venv"
}

# The API fuzzer the test suite runs (tests/api/api_fuzz.rs), pinned so a
# new release cannot change what the suite checks without a commit.
SCHEMATHESIS_VERSION=4.32.5

# The Standard Webhooks reference library (tests/api/rules.rs verifies the
# gateway's signatures with it), pinned like schemathesis.
STANDARDWEBHOOKS_VERSION=1.3.0

# Makes sure .venv has PACKAGE at exactly VERSION; prints one line.
ensure_pinned() {
    local package=$1 version=$2 have
    have=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$package'))" 2>/dev/null) || have=""
    if [[ $have == "$version" ]]; then
        step "$package: present in .venv ($have)"
        return
    fi
    ensure_venv
    .venv/bin/pip install -q "$package==$version" >".data/pip-$package.log" 2>&1 ||
        die "$package: pip install $package==$version failed; see .data/pip-$package.log"
    step "$package: ${VENV_HOW}installed $version into .venv"
}

secantus_version() {
    .venv/bin/python -c 'import importlib.metadata as m; print(m.version("secantusdb"))' 2>/dev/null ||
        printf 'secantusdb'
}

if [[ $MONGODB_URI_VALUE == mongodb+srv://* ]]; then
    step "mongodb: using an SRV URI (remote, not managed by run.sh)"
else
    parse_host_port "$MONGODB_URI_VALUE" 27017
    MONGO_HOST=$HOST MONGO_PORT=$PORT
    if [[ $MONGO_PORT == 27017 ]]; then
        MONGO_NAME=mongo
    else
        MONGO_NAME=mongo-$MONGO_PORT
    fi
    MONGO_DATA=.data/$MONGO_NAME MONGO_LOG=.data/$MONGO_NAME.log MONGO_PIDFILE=.data/$MONGO_NAME.pid

    # The test suite starts SecantusDBs of its own (the store-outage test),
    # so `test` needs the venv even when a MongoDB already answers.
    if [[ $MODE == test ]]; then
        ensure_secantus
    fi
    if port_open "$MONGO_HOST" "$MONGO_PORT"; then
        step "mongodb: answering at $MONGO_HOST:$MONGO_PORT"
    elif ! is_local "$MONGO_HOST"; then
        warn "mongodb: nothing answers at $MONGO_HOST:$MONGO_PORT (remote, not managed by run.sh)"
    else
        # A SecantusDB this script started earlier may still be booting.
        previous=""
        if [[ -f $MONGO_PIDFILE ]]; then
            previous=$(<"$MONGO_PIDFILE")
            if ! [[ $previous =~ ^[0-9]+$ ]] || ! kill -0 "$previous" 2>/dev/null ||
                ! grep -qa secantus "/proc/$previous/cmdline" 2>/dev/null; then
                previous=""
            fi
        fi
        if [[ -n $previous ]]; then
            pid=$previous
            what="waited for the SecantusDB already starting (pid $pid)"
        else
            ensure_secantus
            mkdir -p "$MONGO_DATA"
            case "$MONGO_HOST" in ::1) bind_host=::1 ;; *) bind_host=127.0.0.1 ;; esac
            nohup setsid sh -c 'echo $$ >"$0"; exec "$@"' "$MONGO_PIDFILE" \
                .venv/bin/python -m secantus --host "$bind_host" --port "$MONGO_PORT" \
                --storage-path "$MONGO_DATA" >>"$MONGO_LOG" 2>&1 </dev/null &
            for _ in $(seq 1 50); do
                [[ -s $MONGO_PIDFILE ]] && break
                sleep 0.1
            done
            [[ -s $MONGO_PIDFILE ]] || die "mongodb: SecantusDB did not start; see $MONGO_LOG"
            pid=$(<"$MONGO_PIDFILE")
            STARTED_MONGO_PID=$pid
            if [[ $MODE == test ]]; then
                trap on_exit EXIT
                trap 'exit 130' INT
                trap 'exit 143' TERM
            fi
            what="started SecantusDB on $bind_host:$MONGO_PORT (data in $MONGO_DATA, log $MONGO_LOG, pid $pid)"
        fi
        deadline=$((SECONDS + 30))
        until port_open "$MONGO_HOST" "$MONGO_PORT"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                tail -n 20 "$MONGO_LOG" >&2 || true
                die "mongodb: SecantusDB exited before answering at $MONGO_HOST:$MONGO_PORT; see $MONGO_LOG"
            fi
            ((SECONDS < deadline)) || {
                tail -n 20 "$MONGO_LOG" >&2 || true
                die "mongodb: SecantusDB did not answer at $MONGO_HOST:$MONGO_PORT within 30 s; see $MONGO_LOG"
            }
            sleep 0.5
        done
        step "mongodb: $what"
    fi
fi

# -------------------------------------------------------------- schemathesis --

if [[ $MODE == test ]]; then
    ensure_pinned schemathesis "$SCHEMATHESIS_VERSION"
    ensure_pinned standardwebhooks "$STANDARDWEBHOOKS_VERSION"
fi

# ------------------------------------------------------------------ chromium --

# The console's browser tests (tests/api/dashboard.rs) drive Debian's
# Chromium headless through chromedriver; CHROMIUM_BIN / CHROMEDRIVER_BIN
# point the tests at others.
if [[ $MODE == test ]]; then
    chromium_bin=${CHROMIUM_BIN:-/usr/bin/chromium}
    chromedriver_bin=${CHROMEDRIVER_BIN:-/usr/bin/chromedriver}
    if [[ -x $chromium_bin && -x $chromedriver_bin ]]; then
        step "chromium: present ($("$chromedriver_bin" --version 2>/dev/null | cut -d' ' -f1-2))"
    else
        [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 ||
            die "chromium: missing; install it (sudo apt-get install -y chromium chromium-driver) and re-run"
        {
            apt-get update -q &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
        } >.data/apt-chromium.log 2>&1 ||
            die "chromium: apt-get install chromium chromium-driver failed; see .data/apt-chromium.log"
        step "chromium: installed with apt-get ($("$chromedriver_bin" --version 2>/dev/null | cut -d' ' -f1-2))"
    fi
fi

# ---------------------------------------------------------------------- .env --

if admin_password=$(dotenv_get ADMIN_PASSWORD) && [[ -n $admin_password ]]; then
    note=""
    [[ -n ${ADMIN_PASSWORD-} ]] && note="; the environment's ADMIN_PASSWORD overrides it"
    step ".env: has ADMIN_PASSWORD (user $(setting ADMIN_USER admin))$note"
else
    admin_password=$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | cut -c 1-32)
    [[ ${#admin_password} -ge 24 ]] || die ".env: could not generate a password"
    if [[ ! -f .env ]]; then
        (umask 077 && : >.env)
    elif [[ -s .env && $(tail -c 1 .env | od -An -c | tr -d ' ') != '\n' ]]; then
        printf '\n' >>.env
    fi
    printf '# written by run.sh: the bootstrap admin'"'"'s password (user %s)\nADMIN_PASSWORD=%s\n' \
        "$(setting ADMIN_USER admin)" "$admin_password" >>.env
    step ".env: generated ADMIN_PASSWORD=$admin_password (user $(setting ADMIN_USER admin); shown once, kept in .env)"
fi
unset admin_password

# The key the stored secrets (signing secrets, target credentials) are
# sealed under: lose it and they cannot be read; never printed.
if secrets_key=$(dotenv_get SECRETS_KEY) && [[ -n $secrets_key ]]; then
    note=""
    [[ -n ${SECRETS_KEY-} ]] && note="; the environment's SECRETS_KEY overrides it"
    step ".env: has SECRETS_KEY$note"
else
    secrets_key=$(head -c 32 /dev/urandom | base64 | tr -d '\n')
    [[ ${#secrets_key} -eq 44 ]] || die ".env: could not generate a SECRETS_KEY"
    if [[ ! -f .env ]]; then
        (umask 077 && : >.env)
    elif [[ -s .env && $(tail -c 1 .env | od -An -c | tr -d ' ') != '\n' ]]; then
        printf '\n' >>.env
    fi
    printf '# written by run.sh: the key stored secrets are sealed under (AES-256-GCM); keep a copy, without it they cannot be read\nSECRETS_KEY=%s\n' \
        "$secrets_key" >>.env
    step ".env: generated SECRETS_KEY (32 random bytes, base64; kept in .env, not shown: back it up with .env)"
fi
unset secrets_key

# --------------------------------------------------------------------- run --

if [[ $MODE == run ]]; then
    step "gateway: cargo run --release --bin workerrmq on http://$(setting BIND_ADDR 127.0.0.1:8080) (Ctrl-C stops it; RabbitMQ and MongoDB keep running)"
    exec cargo run --release --bin workerrmq
fi

# -------------------------------------------------------------------- test --

# The tests reach the same broker and store the set-up checked; they make
# their own admin password, so .env's is not passed on.
export RUST_LOG=${RUST_LOG:-warn}
export AMQP_URL=$AMQP_URL_VALUE
export RABBITMQ_MANAGEMENT_URL=$MANAGEMENT_URL_VALUE
export MONGODB_URI=$MONGODB_URI_VALUE

failed=()

step "test: cargo fmt --all -- --check"
cargo fmt --all -- --check || failed+=(fmt)

step "test: cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings || failed+=(clippy)

if [[ -n $CLUSTER_PID ]]; then
    cluster_wait_began=$SECONDS
    if wait "$CLUSTER_PID"; then
        step "rabbitmq cluster: up ($(tail -n 1 "$CLUSTER_LOG" | sed 's/^rabbitmq-cluster: //'); waited $((SECONDS - cluster_wait_began)) s after fmt and clippy)"
    else
        warn "rabbitmq cluster: did not start; see $CLUSTER_LOG (the cluster tests will fail)"
        failed+=(cluster)
    fi
    CLUSTER_PID=""
fi

if cargo nextest --version >/dev/null 2>&1; then
    step "test: cargo nextest run --workspace --no-fail-fast${*:+ $*}"
    cargo nextest run --workspace --no-fail-fast "$@" || failed+=(tests)
else
    step "test: cargo test --workspace${*:+ $*} (cargo-nextest not installed)"
    cargo test --workspace "$@" || failed+=(tests)
fi

if [[ ${#failed[@]} -gt 0 ]]; then
    step "test: FAILED: ${failed[*]}"
    exit 1
fi
step "test: all passed (fmt, clippy, tests)"
