"""peftflow: Airflow orchestration for RWKV-PEFT adapter fine-tuning."""

__version__ = "0.1.0"
