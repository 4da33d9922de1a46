"""Backend adapters: one module per backend kind behind the small Backend interface in base.py."""
