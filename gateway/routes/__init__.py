"""The gateway's HTTP routes, one module per surface: audio, images, models and jobs under /v1 (the page
is gateway/ui; Jina's own routes are added by gateway/jina_adapter.py)."""
