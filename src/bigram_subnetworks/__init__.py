"""bigram-subnetworks: find and study bigram subnetworks in Transformer language models."""

__version__ = "0.1.0"
