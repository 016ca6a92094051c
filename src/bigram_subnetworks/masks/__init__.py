"""Subnetwork masks: mask algebra and files, losses and the continuous-sparsification trainer."""
