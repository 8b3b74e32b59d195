"""The KServe v2 gRPC service: its .proto and the modules grpcio-tools generated from it."""
