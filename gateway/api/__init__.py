"""Front protocols: REST (ASGI apps: public fronts and the admin API) and gRPC servicers."""
