#!/usr/bin/env bash
# Regenerates the Python gRPC stubs from our .proto files with grpc_tools.protoc:
#   proto/runtime/v1/api.proto  (CRI v1 subset)  -> edgecore/cri/api_pb2{,_grpc}.py{,i}
#   proto/dmi/v1beta1/api.proto (KubeEdge DMI)   -> moorage/dmi/api_pb2{,_grpc}.py{,i}
# Safe to run from any directory and to re-run: output files are replaced.
# Needs grpcio-tools in the interpreter (the project's test extra installs it);
# override the interpreter with PYTHON=/path/to/python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

if ! "$PYTHON" -c 'import grpc_tools.protoc' 2>/dev/null; then
    echo "gen-protos: grpc_tools not importable by $PYTHON;" \
         "run: $PYTHON -m pip install grpcio grpcio-tools" >&2
    exit 1
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

generate() {  # <package path under proto/, e.g. runtime/v1> <output package dir>
    local package="$1" out="$2" module="${1//\//.}"
    # proto/ is the include root, so the descriptor is registered as e.g.
    # "runtime/v1/api.proto", not a bare "api.proto" that would clash in the pool.
    "$PYTHON" -m grpc_tools.protoc -I proto --python_out="$TMP" --pyi_out="$TMP" \
        --grpc_python_out="$TMP" "proto/$package/api.proto"
    local gen="$TMP/$package"
    # protoc imports the message module absolutely ("from runtime.v1 import api_pb2");
    # the stubs live inside our packages, so make that import package-relative.
    sed -i -E "s/^from ${module//./\\.} import api_pb2 as /from . import api_pb2 as /" \
        "$gen/api_pb2_grpc.py"
    if grep -qE "^(from|import) ${module%%.*}" "$gen"/api_pb2*.py*; then
        echo "gen-protos: unexpected absolute import left in the $package stubs" >&2
        exit 1
    fi
    mkdir -p "$out"
    mv -f "$gen"/api_pb2.py "$gen"/api_pb2.pyi "$gen"/api_pb2_grpc.py "$out/"
    echo "gen-protos: wrote $out/api_pb2.py api_pb2.pyi api_pb2_grpc.py"
}

generate runtime/v1 edgecore/cri
generate dmi/v1beta1 moorage/dmi
