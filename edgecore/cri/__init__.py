"""CRI v1 client: Python stubs generated from proto/runtime/v1/api.proto."""
