#!/usr/bin/env bash
# Regenerates the Python KubeEdge DMI v1beta1 stubs (moorage/dmi/api_pb2.py,
# api_pb2.pyi, api_pb2_grpc.py) from proto/dmi/v1beta1/api.proto with
# grpc_tools.protoc.
# Safe to run from any directory and to re-run: output files are replaced.
# Needs grpcio-tools in the interpreter: .venv/bin/pip install grpcio grpcio-tools
# Override the interpreter with PYTHON=/path/to/python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PROTO_ROOT="proto"
PROTO_FILE="dmi/v1beta1/api.proto"
OUT_DIR="moorage/dmi"

if ! "$PYTHON" -c 'import grpc_tools.protoc' 2>/dev/null; then
    echo "gen-dmi-protos: grpc_tools not importable by $PYTHON;" \
         "run: $PYTHON -m pip install grpcio grpcio-tools" >&2
    exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Compile with proto/ as the include root so the descriptor is registered as
# "dmi/v1beta1/api.proto" (not a bare "api.proto", which would clash with
# other api.proto files in the same descriptor pool). The import of
# google/protobuf/any.proto is resolved from the well-known types that
# grpc_tools bundles (it adds that include path itself).
"$PYTHON" -m grpc_tools.protoc \
    -I "$PROTO_ROOT" \
    --python_out="$TMP" \
    --pyi_out="$TMP" \
    --grpc_python_out="$TMP" \
    "$PROTO_ROOT/$PROTO_FILE"

GEN="$TMP/dmi/v1beta1"
# protoc emits "from dmi.v1beta1 import api_pb2 as ..." in the gRPC module;
# the stubs live in the moorage.dmi package, so make it package-relative.
# (google.protobuf imports are real top-level packages and stay absolute.)
sed -i -E 's/^from dmi\.v1beta1 import api_pb2 as /from . import api_pb2 as /' \
    "$GEN/api_pb2_grpc.py"
if grep -qE '^(from|import) dmi' "$GEN/api_pb2_grpc.py" "$GEN/api_pb2.py" "$GEN/api_pb2.pyi"; then
    echo "gen-dmi-protos: unexpected absolute import left in generated stubs" >&2
    exit 1
fi

mkdir -p "$OUT_DIR"
for f in api_pb2.py api_pb2.pyi api_pb2_grpc.py; do
    mv -f "$GEN/$f" "$OUT_DIR/$f"
done
if [[ ! -f "$OUT_DIR/__init__.py" ]]; then
    echo '"""KubeEdge DMI v1beta1 stubs: generated from proto/dmi/v1beta1/api.proto."""' \
        > "$OUT_DIR/__init__.py"
fi
echo "gen-dmi-protos: wrote $OUT_DIR/api_pb2.py api_pb2.pyi api_pb2_grpc.py"
