"""The quality track: small models trained with each attention method on synthetic recall tasks."""
