"""Data stages: corpus -> tokenizer -> tokenized sequences -> bigram statistics."""
