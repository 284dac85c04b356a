#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this one machine, beside the system broker
# (5672/15672/25672, node rabbit@…), which it never touches. For the cluster
# tests and for trying the gateway's scale-out by hand.
#
#   scripts/rabbitmq-cluster.sh start    start the nodes that are not running,
#                                        join nodes 2 and 3 to node 1, and wait
#                                        until all three are clustered and
#                                        answer AMQP (already running: ok)
#   scripts/rabbitmq-cluster.sh stop     stop all three nodes (logs are kept;
#                                        a start with none running begins a
#                                        fresh cluster)
#   scripts/rabbitmq-cluster.sh status   each node's state
#
#   node             AMQP   management  distribution
#   wrmq1@localhost  5691   15691       25691
#   wrmq2@localhost  5692   15692       25692
#   wrmq3@localhost  5693   15693       25693
#
# Data, logs and one rabbitmq.conf per node live under .data/cluster/wrmqN/,
# owned by the rabbitmq user: rabbitmq-server (and rabbitmqctl) drop to it
# when run as root, so the nodes share that user's Erlang cookie
# (/var/lib/rabbitmq/.erlang.cookie) with the CLI tools. Everything a node
# reads comes from RABBITMQ_* variables set here (RABBITMQ_CONF_ENV_FILE
# included), so /etc/rabbitmq/ is never read for these nodes.
#
# Guest over 127.0.0.1 works as on the system broker:
#   AMQP_URL=amqp://guest:guest@127.0.0.1:5691/%2f,amqp://guest:guest@127.0.0.1:5692/%2f,amqp://guest:guest@127.0.0.1:5693/%2f
#   RABBITMQ_MANAGEMENT_URL=http://127.0.0.1:15691,http://127.0.0.1:15692,http://127.0.0.1:15693

set -euo pipefail

cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BASE=$ROOT/.data/cluster
NODES=(1 2 3)
# How long `start` waits for the nodes to boot and cluster.
START_TIMEOUT=${CLUSTER_START_TIMEOUT:-180}

say() { printf 'rabbitmq-cluster: %s\n' "$*"; }
die() {
    printf 'rabbitmq-cluster: error: %s\n' "$*" >&2
    exit 1
}

node_name() { printf 'wrmq%s@localhost' "$1"; }
amqp_port() { printf '%s' $((5690 + $1)); }
management_port() { printf '%s' $((15690 + $1)); }
dist_port() { printf '%s' $((25690 + $1)); }
node_dir() { printf '%s/wrmq%s' "$BASE" "$1"; }

port_open() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

# The CLI tools, always aimed at one of these nodes by name. The wrappers in
# /usr/sbin switch to the rabbitmq user when run as root.
ctl() {
    local node=$1
    shift
    rabbitmqctl -q -n "$(node_name "$node")" "$@"
}

check_user() {
    command -v rabbitmq-server >/dev/null 2>&1 ||
        die "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
    local me
    me=$(id -un)
    [[ $me == root || $me == rabbitmq ]] ||
        die "run as root or as the rabbitmq user (the nodes run as rabbitmq and share its Erlang cookie)"
}

# The Erlang VM of node $1 is alive (its pid file names a live process).
vm_alive() {
    local pidfile pid
    pidfile="$(node_dir "$1")/wrmq$1.pid"
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

write_node_files() {
    local i=$1 dir
    dir=$(node_dir "$i")
    mkdir -p "$dir/mnesia" "$dir/log"
    cat >"$dir/rabbitmq.conf" <<EOF
# wrmq$i@localhost, written by scripts/rabbitmq-cluster.sh
listeners.tcp.default = 127.0.0.1:$(amqp_port "$i")
management.tcp.port = $(management_port "$i")
management.tcp.ip = 127.0.0.1
# Quiet and small: three nodes share a small test machine.
log.file.level = warning
log.console = false
EOF
    printf '[rabbitmq_management].\n' >"$dir/enabled_plugins"
    # At-least-once dead-lettering (the quorum delay queues' hop back to
    # their main queue) re-sends what the target queue did not confirm after
    # this long; the default, 3 minutes, would hold a retry caught by a node
    # crash that long. Not settable in rabbitmq.conf.
    cat >"$dir/advanced.config" <<'EOF'
[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}].
EOF
    # Read instead of /etc/rabbitmq/rabbitmq-env.conf (which names the
    # system node); distribution stays on the loopback like the system one.
    cat >"$dir/rabbitmq-env.conf" <<'EOF'
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
}

start_vm() {
    local i=$1 dir
    dir=$(node_dir "$i")
    env \
        RABBITMQ_NODENAME="$(node_name "$i")" \
        RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" \
        RABBITMQ_MNESIA_DIR="$dir/mnesia/wrmq$i" \
        RABBITMQ_PLUGINS_EXPAND_DIR="$dir/mnesia/plugins-expand" \
        RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_PID_FILE="$dir/wrmq$i.pid" \
        RABBITMQ_DIST_PORT="$(dist_port "$i")" \
        RABBITMQ_NODE_PORT="$(amqp_port "$i")" \
        rabbitmq-server -detached >>"$dir/log/start.log" 2>&1
}

# The running nodes as node 1 sees them, one a line (empty when it is down).
running_nodes() {
    ctl 1 cluster_status --formatter json 2>/dev/null |
        python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin).get("running_nodes", [])))' \
            2>/dev/null || true
}

all_clustered() {
    local running i
    running=$(running_nodes)
    for i in "${NODES[@]}"; do
        grep -qx "$(node_name "$i")" <<<"$running" || return 1
        port_open "$(amqp_port "$i")" || return 1
    done
}

# Node $i (2 or 3) is a member of node 1's cluster (running or not).
is_member() {
    ctl 1 cluster_status --formatter json 2>/dev/null |
        python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin).get("disk_nodes", [])))' \
            2>/dev/null | grep -qx "$(node_name "$1")"
}

cmd_start() {
    check_user
    local began=$SECONDS i
    if all_clustered; then
        say "already running: $(node_name 1), $(node_name 2), $(node_name 3) clustered (AMQP 5691-5693)"
        return 0
    fi
    # Nothing running: start a fresh cluster. The test cluster keeps
    # nothing worth keeping, and restarting old data is fragile (the last
    # node stopped must start first; a node's feature-flag sync with the
    # others was seen to crash 3.10.8 on such a restart).
    local alive=""
    for i in "${NODES[@]}"; do
        if vm_alive "$i"; then
            alive=1
        fi
    done
    if [[ -z $alive ]]; then
        rm -rf "$BASE"/wrmq*/mnesia
    fi
    mkdir -p "$BASE"
    for i in "${NODES[@]}"; do
        write_node_files "$i"
    done
    chown -R rabbitmq:rabbitmq "$BASE"

    # Boot the VMs together (they are independent until they join).
    local booted=()
    for i in "${NODES[@]}"; do
        if vm_alive "$i"; then
            # Up already; its app may have been stopped (a test's stop_app).
            ctl "$i" start_app >/dev/null ||
                die "$(node_name "$i"): start_app failed; see $(node_dir "$i")/log/"
            say "$(node_name "$i"): was up"
        else
            say "$(node_name "$i"): starting (log in $(node_dir "$i")/log)"
            start_vm "$i" || die "$(node_name "$i"): rabbitmq-server -detached failed; see $(node_dir "$i")/log/start.log"
            booted+=("$i")
        fi
    done
    for i in "${booted[@]}"; do
        # `wait` returns once the pid file's VM has booted the app.
        ctl "$i" wait "$(node_dir "$i")/wrmq$i.pid" --timeout "$START_TIMEOUT" >/dev/null 2>&1 ||
            die "$(node_name "$i") did not start within ${START_TIMEOUT} s; see $(node_dir "$i")/log/"
    done

    # Join 2 and 3 to 1, one at a time (concurrent joins race in Mnesia).
    for i in "${NODES[@]:1}"; do
        if is_member "$i"; then
            continue
        fi
        say "$(node_name "$i"): joining $(node_name 1)"
        ctl "$i" stop_app >/dev/null
        ctl "$i" join_cluster "$(node_name 1)" >/dev/null ||
            die "$(node_name "$i"): join_cluster $(node_name 1) failed"
        ctl "$i" start_app >/dev/null
    done

    local deadline=$((SECONDS + START_TIMEOUT))
    until all_clustered; do
        ((SECONDS < deadline)) || {
            cmd_status >&2 || true
            die "the three nodes did not cluster within ${START_TIMEOUT} s; see $BASE/wrmq*/log/"
        }
        sleep 1
    done
    say "started in $((SECONDS - began)) s: $(node_name 1), $(node_name 2), $(node_name 3) clustered (AMQP 5691-5693, management 15691-15693)"
}

cmd_stop() {
    check_user
    local i pids=() any=""
    for i in "${NODES[@]}"; do
        if vm_alive "$i"; then
            any=1
            # With the pid file, `stop` returns once the OS process is gone.
            ctl "$i" stop "$(node_dir "$i")/wrmq$i.pid" >/dev/null 2>&1 &
            pids+=($!)
        fi
    done
    if [[ -z $any ]]; then
        say "not running"
        return 0
    fi
    for pid in "${pids[@]}"; do
        wait "$pid" || true
    done
    for i in "${NODES[@]}"; do
        if vm_alive "$i"; then
            die "$(node_name "$i") is still running"
        fi
    done
    say "stopped"
}

cmd_status() {
    local running i state
    running=$(running_nodes)
    for i in "${NODES[@]}"; do
        if ! vm_alive "$i"; then
            state=stopped
        elif grep -qx "$(node_name "$i")" <<<"$running"; then
            if port_open "$(amqp_port "$i")"; then
                state="running, clustered, AMQP answers"
            else
                state="running, clustered, AMQP not answering"
            fi
        elif [[ -z $running ]]; then
            state="up (node 1 cannot tell whether it is clustered)"
        else
            state="up, app stopped or not in the cluster"
        fi
        printf '%-16s AMQP %s  management %s  distribution %s  %s\n' \
            "$(node_name "$i")" "$(amqp_port "$i")" "$(management_port "$i")" "$(dist_port "$i")" "$state"
    done
}

case "${1-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        printf 'usage: %s start|stop|status\n' "$0" >&2
        exit 2
        ;;
esac
