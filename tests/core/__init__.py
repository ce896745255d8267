"""The sans-IO protocol core: messages, Noise, AllowedIPs, tunnel, timers, rekey, state machine."""
