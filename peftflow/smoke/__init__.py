"""The smoke pipeline (`make smoke`) and the smoke corpus and base model it needs."""
