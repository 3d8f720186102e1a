"""The Flow's gateway component: flow.yml runs gateway/config.yml (SpeechToImageGateway, in jina_adapter.py),
which serves the application that app.py builds (create_app) over the Flow."""
