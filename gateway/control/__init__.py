"""Control plane: the route store (and, later, rollouts)."""
