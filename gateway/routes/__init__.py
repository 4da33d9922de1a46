"""The routes: the one contract the data plane and the control plane share.

schema.py  the routes document (YAML) and its validation, with the file, field path and reason of every refusal
table.py   RouteTable, built once per revision: resolve() picks version, label, A/B variant, shadow; no I/O
store.py   holds the current table, watches the document, swaps tables (the last good one keeps serving)
writer.py  writes of the routes file: validated, compare-and-swap on the revision, atomic, locked
"""
