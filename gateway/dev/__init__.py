"""Local launchers for development and tests: TorchServe, TF Serving (real or stand-in), the gateway, `gateway dev`.
Never imported by the gateway's own serving code (import-linter checks it)."""
