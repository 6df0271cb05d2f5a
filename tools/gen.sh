#!/usr/bin/env bash
# Regenerates every generated file from proto/ with pinned tools:
#   Python: grpc_tools.protoc (grpcio-tools pinned in pyproject.toml) + mypy-protobuf type stubs
#   Go:     buf (npm, pinned in tools/package.json) + protoc-gen-go / protoc-gen-go-grpc (pinned below)
# Usage: tools/gen.sh            regenerate in place
#        tools/gen.sh --check    regenerate, then fail if anything differs from what is committed
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
PY=${PYTHON:-.venv/bin/python}
TOOLS_BIN="$PWD/.tools/bin"
BUF=tools/node_modules/.bin/buf

install_tools() {
  [ -x "$BUF" ] || (cd tools && npm ci --silent --no-audit --no-fund)
  mkdir -p "$TOOLS_BIN"
  local stamp="$TOOLS_BIN/.versions"
  local want="$PROTOC_GEN_GO_VERSION $PROTOC_GEN_GO_GRPC_VERSION"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    GOBIN="$TOOLS_BIN" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
    GOBIN="$TOOLS_BIN" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
    echo "$want" > "$stamp"
  fi
}

gen_python() {
  local out=clients/python
  find "$out/llmtrace/api/v1" -name '*_pb2*.py*' -delete
  local venv_bin
  venv_bin=$(dirname "$PY")
  "$PY" -m grpc_tools.protoc \
    -I proto \
    --plugin=protoc-gen-mypy="$venv_bin/protoc-gen-mypy" \
    --plugin=protoc-gen-mypy_grpc="$venv_bin/protoc-gen-mypy_grpc" \
    --python_out="$out" --grpc_python_out="$out" \
    --mypy_out="$out" --mypy_grpc_out="$out" \
    proto/llmtrace/api/v1/*.proto
}

gen_go() {
  find clients/go/llmtrace/api/v1 -name '*.pb.go' -delete 2>/dev/null || true
  PATH="$TOOLS_BIN:$PATH" "$BUF" generate
}

install_tools
gen_python
gen_go

if [ "${1:-}" = "--check" ]; then
  if [ -n "$(git status --porcelain -- clients/python/llmtrace clients/go/llmtrace)" ]; then
    echo "generated code is stale; run 'make gen' and commit:" >&2
    git status --porcelain -- clients/python/llmtrace clients/go/llmtrace >&2
    git --no-pager diff --stat -- clients/python/llmtrace clients/go/llmtrace >&2
    exit 1
  fi
  echo "generated code is up to date"
fi
