"""TensorBoard event files: scalar points encoded as bytes, written from a background thread, read back."""
