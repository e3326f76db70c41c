"""KubeEdge DMI v1beta1 stubs: generated from proto/dmi/v1beta1/api.proto."""
