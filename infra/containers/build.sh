#!/usr/bin/env bash
# Builds the images that run orderflow in containers on a machine with no registry: each is tagged with a hash of its
# inputs (its Containerfile, the files it copies, its base image's id) and built only when no image has that tag.
#
#   infra/containers/build.sh [base|python|kafka|postgres|mailpit|app|all]   (default: all)
#
# base     Debian bookworm (debootstrap --variant=minbase), imported as localhost/orderflow-base:bookworm
# python   base + Debian's python3 3.11 and venv: the BASE of the Dockerfile here (python:3.11-slim elsewhere)
# kafka    base + Debian's Java 17 + the project's pinned Kafka jars (~/.cache/orderflow/kafka-*/libs)
# postgres base + Debian's PostgreSQL 15
# mailpit  base + the Mailpit binary built by `make mailpit`
# app      the repository's Dockerfile on the python image, from the committed tree (HEAD, or ORDERFLOW_IMAGE_REV):
#          the runtime lock only
#
# Prints one line per image: its name, whether it was built or cached, the seconds taken and its size.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
podman() { "$here/podman.sh" "$@"; }
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
KAFKA_VERSION="$(sed -n 's/^KAFKA_VERSION = "\(.*\)"/\1/p' "$root/orderflow/infra/kafka.py")"
MAILPIT_VERSION="$(sed -n 's/^MAILPIT_VERSION = "\(.*\)"/\1/p' "$root/orderflow/infra/mailpit.py")"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/orderflow"
PY="$root/.venv/bin/python"

hash_of() {  # hash_of PATH... : one hash over the files' contents and names below each PATH (not where PATH is)
    local path
    for path in "$@"; do
        (cd "$(dirname "$path")" && find "$(basename "$path")" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    done | sha256sum | cut -c1-16
}

report() {  # report NAME STARTED HOW
    local size
    size="$(podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}')"
    printf '%-44s %-7s %5ss  %s\n' "$1" "$3" "$(( $(date +%s) - $2 ))" "$size"
}

image_id() { podman image inspect --format '{{.Id}}' "$1" | cut -c1-16; }

build_base() {
    local started key tag dir
    started=$(date +%s)
    key="$(printf 'debootstrap --variant=minbase %s %s\n' "$SUITE" "$MIRROR" | sha256sum | cut -c1-16)"
    tag="localhost/orderflow-base:$SUITE-$key"
    if podman image exists "$tag"; then
        podman tag "$tag" "localhost/orderflow-base:$SUITE"; report "$tag" "$started" cached; return
    fi
    command -v debootstrap >/dev/null || { echo "debootstrap is needed: apt-get install -y debootstrap" >&2; exit 1; }
    dir="$(mktemp -d /var/tmp/orderflow-base.XXXXXX)"
    trap 'rm -rf "$dir"' RETURN
    debootstrap --variant=minbase "$SUITE" "$dir" "$MIRROR" >/dev/null
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar -C "$dir" -c . | podman import --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
    podman tag "$tag" "localhost/orderflow-base:$SUITE"
    report "$tag" "$started" built
}

build_from_containerfile() {  # NAME CONTAINERFILE CONTEXT BASE [INPUT...]
    local name=$1 file=$2 context=$3 base=$4 started key tag
    shift 4
    started=$(date +%s)
    key="$(printf '%s %s\n' "$(image_id "$base")" "$(hash_of "$file" "$@")" | sha256sum | cut -c1-16)"
    tag="localhost/orderflow-$name:in-$key"
    if podman image exists "$tag"; then
        podman tag "$tag" "localhost/orderflow-$name:latest"; report "$tag" "$started" cached; return
    fi
    podman build --quiet --network host --build-arg "BASE=$base" -f "$file" -t "$tag" "$context" >/dev/null
    podman tag "$tag" "localhost/orderflow-$name:latest"
    report "$tag" "$started" built
}

build_python() {
    build_from_containerfile python "$here/python.Containerfile" "$here" "localhost/orderflow-base:$SUITE"
}

build_kafka() {
    local libs="$CACHE/kafka-$KAFKA_VERSION/libs" context
    [ -f "$libs/kafka_2.13-$KAFKA_VERSION.jar" ] || "$PY" -c 'from orderflow.infra.kafka import ensure_jars; ensure_jars()'
    context="$(mktemp -d /var/tmp/orderflow-kafka.XXXXXX)"
    trap 'rm -rf "$context"' RETURN
    cp -a "$here/kafka" "$context/kafka"
    ln -s "$libs" "$context/libs.link"; cp -rL "$libs" "$context/libs"; rm "$context/libs.link"
    build_from_containerfile kafka "$here/kafka.Containerfile" "$context" "localhost/orderflow-base:$SUITE" \
        "$context/kafka" "$context/libs"
}

build_postgres() {
    build_from_containerfile postgres "$here/postgres.Containerfile" "$here" "localhost/orderflow-base:$SUITE" \
        "$here/postgres"
}

build_mailpit() {
    local binary context
    binary="$("$PY" -m orderflow.infra.mailpit)"
    context="$(mktemp -d /var/tmp/orderflow-mailpit.XXXXXX)"
    trap 'rm -rf "$context"' RETURN
    cp "$binary" "$context/mailpit"
    build_from_containerfile mailpit "$here/mailpit.Containerfile" "$context" "localhost/orderflow-base:$SUITE" \
        "$context/mailpit"
}

build_app() {
    # From the committed tree (HEAD), never the working tree's edits: the same image on every machine for one commit.
    local started key tag base=localhost/orderflow-python:latest rev context
    started=$(date +%s)
    rev="${ORDERFLOW_IMAGE_REV:-HEAD}"
    key="$(printf '%s %s\n' "$(image_id "$base")" "$(cd "$root" && git rev-parse "$rev^{tree}")" | sha256sum | cut -c1-16)"
    tag="localhost/orderflow:in-$key"
    if podman image exists "$tag"; then
        podman tag "$tag" localhost/orderflow:latest; report "$tag" "$started" cached; return
    fi
    context="$(mktemp -d /var/tmp/orderflow-app.XXXXXX)"
    trap 'rm -rf "$context"' RETURN
    (cd "$root" && git archive "$rev" -- Dockerfile .dockerignore requirements-runtime.lock pyproject.toml contracts \
        orderflow services) | tar -x -C "$context"
    # pip's CA bundle and settings of this machine, as build secrets: in no layer of the image.
    local secrets=()
    [ -s /etc/ssl/certs/ca-certificates.crt ] && secrets+=(--secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt)
    [ -s /etc/pip.conf ] && secrets+=(--secret id=pip_conf,src=/etc/pip.conf)
    podman build --quiet --network host --build-arg "BASE=$base" "${secrets[@]}" -f "$context/Dockerfile" -t "$tag" \
        "$context" >/dev/null
    podman tag "$tag" localhost/orderflow:latest
    report "$tag" "$started" built
}

what="${1:-all}"
case "$what" in
    base) build_base ;;
    python) build_python ;;
    kafka) build_kafka ;;
    postgres) build_postgres ;;
    mailpit) build_mailpit ;;
    app) build_app ;;
    all) build_base; build_python; build_kafka; build_postgres; build_mailpit; build_app ;;
    *) echo "usage: $0 [base|python|kafka|postgres|mailpit|app|all]" >&2; exit 2 ;;
esac
