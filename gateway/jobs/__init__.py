"""Jobs: a store of jobs and their events (store.py), and the callbacks sent when a job ends (webhooks.py)."""
