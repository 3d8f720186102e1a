"""Speech-to-image on Jina: the pieces the executors and the client share."""
