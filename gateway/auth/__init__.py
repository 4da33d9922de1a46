"""Who may call what: client authentication (API keys, JWTs), tenants and their grants, per-tenant and per-model
rate limits. :class:`gateway.auth.gate.AuthGate` is what the fronts (authenticate) and the data plane (permit,
admit) call; the rest are its parts: keys.py, jwt.py, tenants.py, ratelimit.py."""
