"""rlq trainer: the RLlib training job (imports nothing from shared/)."""
