"""Language models: architecture layouts, loading, and pretraining of small models."""
