"""Building blocks shared by the model plugins (attention backend, rotary, norms)."""
