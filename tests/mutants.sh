#!/usr/bin/env bash
# Mutation testing of the spine (issue 24): cargo-mutants on connexa-core's
# domain/, store/apply.rs, store/jobs.rs, engine/runner.rs and
# engine/services.rs, one file at a time, each with the tests that exercise it,
# then a caught / missed / timeout / unviable table per file.
#
# Not in CI: on two shared cores a mutant costs about 40 s (an incremental
# build of connexa-core and its test binaries, then the tests), so the whole
# spine takes hours. Mutants that cannot change any outcome are excluded in
# .cargo/mutants.toml, each with its reason. Results: docs/quality.md.
#
#   tests/mutants.sh                          # the whole spine
#   tests/mutants.sh engine/runner.rs         # some files (under connexa-core/src/)
#   JOBS=2 TIMEOUT=120 tests/mutants.sh store/jobs.rs
#   EXTRA='--re reconcile' tests/mutants.sh engine/services.rs  # some mutants
#
# PostgreSQL: with CONNEXA_TEST_PG_URL set (postgres://USER@HOST:PORT/DB, USER
# may create databases) the store tests also run on it; without it their
# Postgres variants are skipped and SQLite alone decides.
# Builds go to MUTANTS_TARGET_DIR (default target/mutants). Pointing it at the
# workspace's usual target dir makes each mutant's build incremental, but then
# do not build there while this runs: cargo-mutants builds a copy of the tree
# whose artifacts have the same names, and cargo compares modification times,
# so a later build of the real tree may reuse a mutated library (touch the
# sources first).
set -euo pipefail

VERSION=27.1.0
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [[ "$(cargo mutants --version 2>/dev/null || true)" != "cargo-mutants $VERSION" ]]; then
    cargo install --locked cargo-mutants --version "$VERSION"
fi

export CARGO_TARGET_DIR=${MUTANTS_TARGET_DIR:-$root/target/mutants}
JOBS=${JOBS:-1}
TIMEOUT=${TIMEOUT:-45}
OUT=${OUT:-$root/mutants.out}
if [[ $# -gt 0 ]]; then
    files=("$@")
else
    files=(engine/runner.rs store/jobs.rs store/apply.rs engine/services.rs 'domain/*.rs')
fi

# The test targets that exercise each part (the library's unit tests always).
tests_for() {
    case "$1" in
        engine/*) echo "--lib --test engine_faults --test engine --test workers --test import_jobs" ;;
        store/*) echo "--lib --test store --test store_concurrency --test engine_faults --test import_jobs" ;;
        domain/*) echo "--lib" ;;
        *) echo "--lib" ;;
    esac
}

# The tests mostly wait on timers and sockets: more threads than cores let a
# mutant's failing tests run out their waits together.
test_args=(-- --test-threads=4)
if [[ -z "${CONNEXA_TEST_PG_URL:-}" ]]; then
    echo "CONNEXA_TEST_PG_URL not set: SQLite only (Postgres tests skipped)"
    test_args+=(--skip postgres)
fi

started=$(date -u +%FT%TZ)
for f in "${files[@]}"; do
    name=${f//\//_}
    name=${name//\*/all}
    mkdir -p "$OUT/$name"
    echo "== $f ($(date -u +%T))"
    # shellcheck disable=SC2046,SC2086 # the test targets and EXTRA are separate words
    cargo mutants -p connexa-core --file "connexa-core/src/$f" \
        --jobs "$JOBS" --test-tool cargo --timeout "$TIMEOUT" \
        --output "$OUT/$name" --no-shuffle ${EXTRA:-} \
        -- $(tests_for "$f") "${test_args[@]}" || true
done

count() { if [[ -f "$1" ]]; then grep -c . "$1" || true; else echo 0; fi; }
echo
echo "cargo-mutants $VERSION, started $started, ended $(date -u +%FT%TZ)"
printf '%-22s %7s %7s %7s %9s\n' file caught missed timeout unviable
for f in "${files[@]}"; do
    name=${f//\//_}
    name=${name//\*/all}
    d="$OUT/$name/mutants.out"
    printf '%-22s %7s %7s %7s %9s\n' "$f" "$(count "$d/caught.txt")" "$(count "$d/missed.txt")" \
        "$(count "$d/timeout.txt")" "$(count "$d/unviable.txt")"
    if [[ -s "$d/missed.txt" ]]; then
        sed 's/^/    missed: /' "$d/missed.txt"
    fi
done
