#!/usr/bin/env bash
# What `make bench` needs besides the project venv, installed only if missing
# (idempotent): Debian packages as root, the peers in .bench/ (never in the venv).
set -euo pipefail
cd "$(dirname "$0")/.."

# -- Debian packages: hyperfine times commands; GNU parallel is a peer.
declare -A needs=([hyperfine]=hyperfine [parallel]=parallel)
missing=()
for cmd in "${!needs[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${needs[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench/install.sh: need root to install: ${missing[*]}" >&2
  else
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

# -- Peers for the reaction-time comparison (bench/reaction.py): see below.
# pm2 from npm, local to .bench/npm (never global); supervisord + superlance (memmon)
# and circus from PyPI in their own venv .bench/venv (never the project's .venv).
if [ ! -x .bench/npm/node_modules/.bin/pm2 ]; then
  if command -v npm >/dev/null 2>&1; then
    mkdir -p .bench/npm
    npm install --silent --no-audit --no-fund --prefix .bench/npm pm2
  else
    echo "bench/install.sh: npm missing: the pm2 rows of the reaction benchmark will be skipped" >&2
  fi
fi
# TypeScript 5 (JavaScript) and 7 (Go) for the runtime hints' `npx tsc` (bench/hints.py),
# local to .bench/npm too.
if [ ! -x .bench/npm/node_modules/typescript5/bin/tsc ] && command -v npm >/dev/null 2>&1; then
  mkdir -p .bench/npm
  npm install --silent --no-audit --no-fund --prefix .bench/npm \
    typescript5@npm:typescript@5 typescript@7
fi
if ! .bench/venv/bin/python -I -c 'import supervisor.supervisord, superlance.memmon, circus' >/dev/null 2>&1; then
  python3 -m venv .bench/venv
  .bench/venv/bin/python -m pip install -q supervisor superlance circus
fi

# -- Real programs for the cap-meaning measure (bench/capfit.py), in .bench/capfit:
# typescript and an MCP stdio server from npm, a package tarball for an offline
# `npm install`, and the Python `mcp` client in a venv of its own.
if [ ! -d .bench/capfit/node_modules/@modelcontextprotocol/server-filesystem ] && command -v npm >/dev/null 2>&1; then
  mkdir -p .bench/capfit
  npm install --silent --no-audit --no-fund --prefix .bench/capfit typescript@5 @modelcontextprotocol/server-filesystem
  (cd .bench/capfit && npm pack --silent ms@2.1.3 >/dev/null)
fi
if ! .bench/capfit/venv/bin/python -I -c 'import mcp' >/dev/null 2>&1; then
  python3 -m venv .bench/capfit/venv
  .bench/capfit/venv/bin/python -m pip install -q mcp
fi
