#!/usr/bin/env bash
# Regenerates the Python CRI stubs (edgecore/cri/api_pb2.py, api_pb2.pyi,
# api_pb2_grpc.py) from proto/runtime/v1/api.proto with grpc_tools.protoc.
# Safe to run from any directory and to re-run: output files are replaced.
# Needs grpcio-tools in the interpreter: .venv/bin/pip install grpcio grpcio-tools
# Override the interpreter with PYTHON=/path/to/python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PROTO_ROOT="proto"
PROTO_FILE="runtime/v1/api.proto"
OUT_DIR="edgecore/cri"

if ! "$PYTHON" -c 'import grpc_tools.protoc' 2>/dev/null; then
    echo "gen-protos: grpc_tools not importable by $PYTHON;" \
         "run: $PYTHON -m pip install grpcio grpcio-tools" >&2
    exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Compile with proto/ as the include root so the descriptor is registered as
# "runtime/v1/api.proto" (not a bare, collision-prone "api.proto").
"$PYTHON" -m grpc_tools.protoc \
    -I "$PROTO_ROOT" \
    --python_out="$TMP" \
    --pyi_out="$TMP" \
    --grpc_python_out="$TMP" \
    "$PROTO_ROOT/$PROTO_FILE"

GEN="$TMP/runtime/v1"
# protoc emits "from runtime.v1 import api_pb2 as ..." in the gRPC module;
# the stubs live in the edgecore.cri package, so make it package-relative.
sed -i -E 's/^from runtime\.v1 import api_pb2 as /from . import api_pb2 as /' \
    "$GEN/api_pb2_grpc.py"
if grep -qE '^(from|import) runtime' "$GEN/api_pb2_grpc.py"; then
    echo "gen-protos: unexpected absolute import left in api_pb2_grpc.py" >&2
    exit 1
fi

mkdir -p "$OUT_DIR"
for f in api_pb2.py api_pb2.pyi api_pb2_grpc.py; do
    mv -f "$GEN/$f" "$OUT_DIR/$f"
done
if [[ ! -f "$OUT_DIR/__init__.py" ]]; then
    echo '"""CRI v1 client stubs (generated from proto/runtime/v1/api.proto)."""' \
        > "$OUT_DIR/__init__.py"
fi
echo "gen-protos: wrote $OUT_DIR/api_pb2.py api_pb2.pyi api_pb2_grpc.py"
