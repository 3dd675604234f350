"""Encrypted and signed checkpoints: keys (keys.py), the streaming AEAD envelope (envelope.py), OpenSSF model
signing (signing.py), the loader's gate (gate.py) and ``lmforge secure`` (command.py)."""
