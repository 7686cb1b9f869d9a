"""train_adapter: RWKV-PEFT command builder/runner and the cpu-reference RWKV-7 LoRA trainer."""
