"""Front protocols: REST (ASGI) now; gRPC servicers next to them later."""
