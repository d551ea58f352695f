"""Encoders, fusion heads, unimodal heads and the MultimodalModel container."""
