"""Built-in example models and data (digits MLP; the char-LM GPT of `fasttrain demo`)."""
