"""The control plane on etcd (several gateway replicas, one truth): the v3 client (client.py), each replica's
lease-bound presence (replicas.py) and the rollout leader's election (election.py). The routes document itself
is the etcd route store (gateway/routes/etcd_store.py)."""
