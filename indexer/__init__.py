"""phylolm-indexer: a streaming, incremental PhyloLM index of language models."""
import os

# huggingface_hub otherwise fetches an "agent harnesses" registry from the public Hub on the
# first request (whatever endpoint is in use) and reports library versions in its user agent:
# a watcher pointed at a private mirror or an air-gapped folder must send nothing elsewhere.
# Set before huggingface_hub is imported anywhere; a user's explicit setting wins.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
