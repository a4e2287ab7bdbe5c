"""Neural networks: frozen pretrained encoders (encoders/) and trainable heads (heads/)."""
