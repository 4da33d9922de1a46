"""The admin API: its own port and token, never on the public port.

app.py       the API (routes and rollouts) and the service the admin worker runs
auth.py      the bearer token: loaded once, compared in constant time
listener.py  which worker serves the admin port (a lock, standby take-over) and the embedded server
client.py    the `gateway routes ...` / `gateway rollout ...` commands' client
"""
