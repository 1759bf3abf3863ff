"""HuggingFace transformers plumbing shared by all methods: model loading and the greedy decode loop."""
