"""Transfer: fine-tuning a trained model (full, frozen, LoRA through peft) on the run's data."""
