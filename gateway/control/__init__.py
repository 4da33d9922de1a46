"""Control plane: the route store and its writer, backend control APIs, rollouts."""
