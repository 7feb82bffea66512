"""Small HTTP services of the compose stack that are neither orchestration nor library: outputs.py serves run
outputs read-only behind the UI's login."""
