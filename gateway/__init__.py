"""The Flow's gateway component: flow.yml runs gateway/config.yml (see gateway.py)."""
