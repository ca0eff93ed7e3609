"""Evaluation: metrics, transcription, evaluate / sample CLIs, loss report, the real-page set builder."""
